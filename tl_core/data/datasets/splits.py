"""Seeded stratified splits of a dataset: a held-out validation set, and k folds."""
from __future__ import annotations

import math
import random
from collections import defaultdict


def stratified_split(labels: list[int], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified split into sorted (train indices, val indices).

    Each class sends n * val_fraction images (rounded half up) to val, but at least 1 to each side when it
    has 2 or more (a lone image goes to train). Each class is shuffled by its own seeded generator,
    so adding a class leaves the other classes' splits as they were.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    indices_of = defaultdict(list)
    for index, label in enumerate(labels):
        indices_of[label].append(index)
    train, val = [], []
    for label, indices in sorted(indices_of.items()):
        shuffled = list(indices)
        random.Random(f"{seed}/{label}").shuffle(shuffled)
        n_val = held_out_count(len(shuffled), val_fraction)
        val += shuffled[:n_val]
        train += shuffled[n_val:]
    return sorted(train), sorted(val)


def held_out_count(n: int, val_fraction: float) -> int:
    """How many of a class's `n` images stratified_split holds out: n * val_fraction rounded half up, at least 1
    and at most n - 1 (a lone image trains). The Data page counts with it, so what it says is the run's split."""
    return 0 if n < 2 else min(max(math.floor(n * val_fraction + 0.5), 1), n - 1)


def stratified_folds(labels: list[int], k: int = 5, seed: int = 0) -> list[list[int]]:
    """Seeded stratified k-fold partition: each class's shuffled images dealt round-robin into k folds.

    Every image is in exactly one fold; for cross-validation, each fold is in turn the validation set.
    """
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    indices_of = defaultdict(list)
    for index, label in enumerate(labels):
        indices_of[label].append(index)
    folds = [[] for _ in range(k)]
    offset = 0
    for label, indices in sorted(indices_of.items()):
        shuffled = list(indices)
        random.Random(f"{seed}/{label}").shuffle(shuffled)
        for j, index in enumerate(shuffled):
            folds[(offset + j) % k].append(index)
        offset += len(shuffled)  # start the next class where this one stopped, so folds stay even
    return [sorted(f) for f in folds]
