"""The images of a run and how they validate: a held-out split, a separate set, or k-fold cross-validation."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RunConfig
from ..data.datasets import load_dataset, stratified_folds, stratified_split

CV_FOLDS = 5  # head-only runs validate by k-fold cross-validation on the cached features
LEAVE_ONE_OUT_UP_TO, LEAVE_ONE_OUT_MAX = 5, 100  # few-shot sets: leave-one-out (see with_cross_validation)


@dataclass
class RunData:
    classes: list[str]
    paths: list
    labels: list[int]
    train_idx: list[int]
    val_idx: list[int]
    validation: str  # in words: held out, a separate set, or cross-validation
    validation_method: dict  # the same as data: {"kind": "holdout" | "separate" | "cv", ...}
    folds: list[list[int]] | None = field(default=None)


def load_run_data(config: RunConfig) -> RunData:
    """The training images (and a separate validation set's, after them) with a held-out or separate split."""
    train_set = load_dataset(config.dataset_dir)
    classes, paths, labels = list(train_set.classes), train_set.paths(), train_set.labels()
    if not config.val_dataset_dir:
        train_idx, val_idx = stratified_split(labels, config.val_fraction, config.seed)
        return RunData(classes, paths, labels, train_idx, val_idx, f"{config.val_fraction:.0%} held out",
                       {"kind": "holdout", "fraction": config.val_fraction, "seed": config.seed})
    val_set = load_dataset(config.val_dataset_dir)
    unknown = sorted(set(val_set.classes) - set(classes))
    if unknown:
        raise ValueError(f"the validation set has classes the training set lacks: {', '.join(unknown)}")
    val_labels = [classes.index(val_set.classes[k]) for k in val_set.labels()]
    return RunData(classes, paths + val_set.paths(), labels + val_labels, list(range(len(labels))),
                   list(range(len(labels), len(labels) + len(val_labels))), "separate validation set",
                   {"kind": "separate"})


def with_cross_validation(data: RunData, seed: int) -> RunData:
    """Every image both ways: k folds give each image an out-of-fold prediction (head-only runs fit in
    milliseconds on cached features), and the head kept is fitted on all of them.

    Few-shot sets (a class of LEAVE_ONE_OUT_UP_TO images or fewer, LEAVE_ONE_OUT_MAX images in all) validate
    by leave-one-out. An image that is the only one of its class cannot be validated (without it the class
    is unknown): it is left out of the scores, and said so. With one image in every class nothing can be
    validated: the scores are then on the training images, and the words say that too.
    """
    counts = {c: data.labels.count(c) for c in set(data.labels)}
    everything = list(range(len(data.labels)))
    if min(counts.values()) <= LEAVE_ONE_OUT_UP_TO and len(everything) <= LEAVE_ONE_OUT_MAX:
        scored = [i for i in everything if counts[data.labels[i]] > 1]
        alone = len(everything) - len(scored)
        if not scored:
            return RunData(data.classes, data.paths, data.labels, everything, everything,
                           "no validation possible with one image a class: the scores are on the training images",
                           {"kind": "none", "reason": "one image a class"}, None)
        words = "leave-one-out (each image scored by a head fitted without it)"
        if alone:
            words += f"; {alone} image{'s' if alone > 1 else ''} alone in {'their' if alone > 1 else 'its'} class " \
                     f"cannot be scored"
        return RunData(data.classes, data.paths, data.labels, everything, scored, words,
                       {"kind": "cv", "folds": len(everything), "leave_one_out": True, "unscored": alone},
                       [[i] for i in everything])
    # At least 2 folds: a class of one image is then validated by a fit that never saw that class.
    k = min(CV_FOLDS, max(2, min(counts.values())))
    return RunData(data.classes, data.paths, data.labels, everything, everything,
                   f"{k}-fold cross-validation (out-of-fold predictions)", {"kind": "cv", "folds": k, "seed": seed},
                   stratified_folds(data.labels, k, seed))


def planned_validation(labels: list[int], freeze: str, augment: str, val_fraction: float, separate: bool) -> str:
    """How a run with these settings will validate, in words, before it runs (the Train page says so).

    The same rules as the run itself (tl_core/fit/loop.py): a separate set when one is given; a head-only run
    without augmentation fits its head on cached features and so validates by cross-validation; every other
    run holds out `val_fraction` of each class. The Auto plan decides the plan, hence the validation, while
    it runs.
    """
    if separate:
        return "a separate validation set"
    held_out = f"{val_fraction:.0%} held out"
    if augment != "none" or not labels or freeze not in ("head", "auto"):
        return held_out
    cv = with_cross_validation(RunData([], [], list(labels), [], [], "", {}), seed=0).validation
    if freeze == "head":
        return cv
    return f"{cv} if the Auto plan keeps feature extraction, {held_out} if it fine-tunes"
