"""Likely label errors: the images whose given label the run's own out-of-sample predictions disagree with.

Confident learning (cleanlab's `find_label_issues`): per class, a threshold is the mean probability the
model gives that class on the images labelled with it; an image counts toward another class when its
probability for it passes that class's threshold; the off-diagonal counts estimate how many labels are
wrong, and the images the model is least sure of their given label fill that estimate (ranked by
"self-confidence", the probability of the given label).

The probabilities must not come from a model that trained on the image it judges. A head-only run
validates by k-fold cross-validation (tl_core.fit.run_data), so every training image has an out-of-fold
prediction: every image is judged. A run that holds images out judges only those (the others trained
the model); a run validated on a separate set judges that set's images. The probabilities are the
run's val_probs.npy (tl_core.fit.outputs), one row per predictions.csv row.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.datasets import Dataset, DatasetError, load_dataset, new_version
from ..fit.metrics import read_predictions
from ..ops.runs import RunFolder, read_config, read_metrics, validation_kind

METHOD = "self_confidence"  # cleanlab's ranking: the probability of the given label, lowest first


def judge(run_dir: str | Path) -> dict:
    """Every image the run can judge, the likeliest label error first.

    {"images": [{"path", "label", "suggested", "suggested_prob", "label_prob", "score", "flagged"}, ...],
     "judged": how many, "scope": which images were judged and why, in words, "flagged": how many}.
    `score` is 1 - the probability of the given label; `flagged` marks confident learning's estimate of
    the wrong labels; `suggested` is the likeliest other class and `suggested_prob` its probability.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if not metrics:
        raise ValueError(f"{run_dir}: the run has no metrics.json; it has not finished")
    if metrics.get("tasks"):
        raise ValueError(f"{run_dir.name}: a multi-task run; label errors are looked for in single-task runs only")
    scope = _scope(metrics)
    probs_file = RunFolder(run_dir).val_probs
    rows = read_predictions(run_dir)
    if validation_kind(metrics) == "none" or not rows:
        return {"images": [], "judged": 0, "flagged": 0, "scope": scope}
    if not probs_file.exists():
        return {"images": [], "judged": 0, "flagged": 0,
                "scope": "this run saved no probabilities per class (it was made by an older version): "
                         "train it again to look for label errors"}
    probs = np.load(probs_file).astype(np.float64)
    classes = list(metrics["classes"])
    if probs.shape != (len(rows), len(classes)):
        raise ValueError(f"{probs_file.name}: {probs.shape[0]} × {probs.shape[1]} probabilities for "
                         f"{len(rows)} predictions of {len(classes)} classes; the run's files disagree")
    labels = np.array([classes.index(row["label"]) for row in rows])
    probs = probs / probs.sum(1, keepdims=True).clip(min=1e-12)
    flagged = set(_confident_learning(labels, probs).tolist())
    label_prob = probs[np.arange(len(rows)), labels]
    others = probs.copy()
    others[np.arange(len(rows)), labels] = -1
    suggested = others.argmax(1)
    order = sorted(range(len(rows)), key=lambda i: (label_prob[i], rows[i]["path"]))
    images = [{"path": rows[i]["path"], "label": rows[i]["label"], "suggested": classes[suggested[i]],
               "suggested_prob": round(float(probs[i, suggested[i]]), 6), "label_prob": round(float(label_prob[i]), 6),
               "score": round(float(1 - label_prob[i]), 6), "flagged": i in flagged} for i in order]
    return {"images": images, "judged": len(images), "flagged": len(flagged), "scope": scope}


def suspects(run_dir: str | Path) -> dict:
    """judge() with only the flagged images: the likely label errors, the likeliest first."""
    report = judge(run_dir)
    report["suspects"] = [image for image in report.pop("images") if image["flagged"]]
    return report


def _confident_learning(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the likely label errors, ranked; cleanlab warns about tiny classes, which the scope already says."""
    if len(np.unique(labels)) < 2:
        return np.array([], dtype=int)
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(find_label_issues(labels, probs, return_indices_ranked_by=METHOD, n_jobs=1), dtype=int)


def _scope(metrics: dict) -> str:
    n = metrics.get("n_val", 0)
    kind = validation_kind(metrics)
    if kind == "cv":
        return f"all {n} images judged, each by a head fitted without it (cross-validation)"
    if kind == "separate":
        return f"the {n} images of the separate validation set judged; the training images cannot be"
    if kind == "none":
        return "no image can be judged: with one image a class, every prediction comes from a model that saw it"
    return (f"only the {n} held-out images judged: the other {metrics.get('n_train', 0)} trained the model, so its "
            f"predictions on them prove nothing. Train the head only (feature extraction) to judge every image")


# ---------------------------------------------------------------- acting on them
def fix_labels(run_dir: str | Path, relabel: dict[str, str] | None = None, drop: list[str] = (),
               name: str | None = None) -> dict[str, Dataset]:
    """New versions of the run's dataset(s) with images relabelled or dropped (paths as judge() gives them).

    Returns {"dataset_dir": the new training set} and/or {"val_dataset_dir": the new validation set},
    for whichever dataset holds the images; the run's own datasets stay as they were.
    """
    config = read_config(run_dir)
    relabel, drop = dict(relabel or {}), list(drop)
    roots = {"dataset_dir": config.dataset_dir, "val_dataset_dir": config.val_dataset_dir}
    versions = {}
    for key, root in roots.items():
        if not root:
            continue
        mine = lambda path: _inside(path, root)  # noqa: E731
        its_relabel = {path: label for path, label in relabel.items() if mine(path)}
        its_drop = [path for path in drop if mine(path)]
        if its_relabel or its_drop:
            versions[key] = new_version(load_dataset(root), relabel=its_relabel, drop=its_drop, name=name)
    claimed = [p for p in [*relabel, *drop] if not any(_inside(p, root) for root in roots.values() if root)]
    if claimed:
        raise DatasetError(f"{claimed[0]}: not an image of this run's datasets")
    if not versions:
        raise DatasetError("no changes chosen: keep, relabel or drop at least one image")
    return versions


def retrain_config(run_dir: str | Path, dataset_dir: str | Path | None = None,
                   val_dataset_dir: str | Path | None = None, name: str | None = None) -> RunConfig:
    """The run's settings on other data (a new dataset version): a new run to queue."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    return config.replace(dataset_dir=str(dataset_dir or config.dataset_dir),
                          val_dataset_dir=str(val_dataset_dir) if val_dataset_dir else config.val_dataset_dir,
                          parent_run=None, retrained_from=run_dir.name,
                          name=name if name is not None else f"{config.name or run_dir.name} on the new version")


def _inside(path: str | Path, root: str | Path) -> bool:
    path, root = Path(path), Path(root)
    return path.is_relative_to(root) or path.resolve().is_relative_to(root.resolve())
