"""What a freeze plan costs on this computer: seconds per image forward and forward+backward, measured
on one small batch, and the time of an epoch that follows from them."""
from __future__ import annotations

import copy
import time

import torch

from . import layers

TIMING_BATCH = 8


def seconds_per_image(model: torch.nn.Module, image_size: int, trainable: set[str], bn_policy: str,
                      batch: int = TIMING_BATCH) -> tuple[float, float]:
    """(forward seconds per image, forward+backward seconds per image) of `model` under the plan.
    The model is copied: the caller's stays as it was."""
    timed = copy.deepcopy(model)
    groups = layers.layer_groups(timed)
    layers.apply_freeze(timed, groups, set(trainable), bn_policy)
    images = torch.randn(batch, 3, image_size, image_size)
    timed.eval()
    with torch.no_grad():
        timed(images[:2])  # warm-up: first calls allocate
        start = time.perf_counter()
        timed(images)
        forward = (time.perf_counter() - start) / batch
    if set(trainable) == {groups[-1].name}:
        return forward, forward
    layers.set_train_mode(timed, bn_policy)
    start = time.perf_counter()
    timed(images).logsumexp(1).mean().backward()
    return forward, (time.perf_counter() - start) / batch


def epoch_seconds(forward_s: float, train_s: float, head_only: bool, n_train: int, n_val: int) -> float:
    """An epoch's estimate: head-only runs pass every image forward once; others train and then validate."""
    return forward_s * (n_train + n_val) if head_only else train_s * n_train + forward_s * n_val
