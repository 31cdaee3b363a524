"""Metrics of a classifier on labelled images: accuracy, per-class precision/recall/F1, confusion matrix;
calibration; and a run's saved predictions sliced for the gallery (a confusion cell, the surest mistakes)."""
from __future__ import annotations

import csv
import math

import numpy as np

from ..ops.runs import RunFolder


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support and the confusion matrix
    (rows: true, columns: predicted)."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    k = len(classes)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    true_pos = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(true_pos.sum() / max(len(y_true), 1)),
        # The mean of the per-class recalls: every class counts the same, so a model that ignores a small
        # class cannot hide behind the big ones (under imbalance, accuracy can).
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }


def accuracy_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy measured on `n` images: honest even for tiny validation sets."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration(confidence, correct, bins: int = 10) -> list[dict]:
    """Reliability table: per confidence bin, how many predictions, their mean confidence and accuracy.

    A well-calibrated model is right 80 % of the time when it says 80 %.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = which == b
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                      "confidence": float(confidence[mask].mean()) if mask.any() else None,
                      "accuracy": float(correct[mask].mean()) if mask.any() else None})
    return table


def expected_calibration_error(table: list[dict]) -> float:
    """Weighted mean gap between confidence and accuracy over the bins (0 is perfect)."""
    total = sum(row["count"] for row in table)
    return sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in table if row["count"]) / max(total, 1)


# ---------------------------------------------------------------- a run's saved predictions

def read_predictions(run_dir) -> list[dict]:
    """The rows of a run's predictions.csv, typed: path, label, predicted, confidence (float), correct (bool).

    One row per validation image (for head-only runs, every image's out-of-fold prediction);
    an empty list when the run saved none. A damaged file (a row cut short, a field that is not a number) is a
    ValueError naming the file and the row.
    """
    path = RunFolder(run_dir).predictions
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    typed = []
    for n, row in enumerate(rows, 2):  # row 1 is the header
        try:
            typed.append({"path": row["path"], "label": row["label"], "predicted": row["predicted"],
                          "confidence": float(row["confidence"]), "correct": row["label"] == row["predicted"],
                          # a multi-task run: one row per image and task
                          **({"task": row["task"]} if row.get("task") else {})})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path.name} is damaged: row {n} cannot be read ({type(error).__name__}: {error})") \
                from None
    return typed


def _most_confident_first(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["confidence"], reverse=True)  # stable: ties keep file order


def cell(predictions: list[dict], true_label: str, predicted_label: str) -> list[dict]:
    """The images of one confusion-matrix cell (this true class, predicted as that one), most confident first."""
    return _most_confident_first([row for row in predictions
                                  if row["label"] == true_label and row["predicted"] == predicted_label])


def most_confidently_wrong(predictions: list[dict], n: int | None = 12) -> list[dict]:
    """The `n` mistakes the model was surest of (all of them when n is None): where to look first."""
    wrong = _most_confident_first([row for row in predictions if not row["correct"]])
    return wrong if n is None else wrong[:n]


def most_confused_pair(metrics: dict) -> tuple[str, str] | None:
    """(true class, predicted class) of the biggest off-diagonal cell of the confusion matrix; None without mistakes."""
    classes, confusion = metrics.get("classes") or [], metrics.get("confusion") or []
    best, pair = 0, None
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            if i != j and count > best:
                best, pair = count, (classes[i], classes[j])
    return pair


def run_calibration(run_dir, bins: int = 10) -> dict:
    """How far a run's stated confidence is from how often it is right, from its predictions.csv.

    {"table": calibration rows, "ece", "count", "confidence" (mean), "accuracy", "text": the verdict in words}.
    """
    predictions = read_predictions(run_dir)
    if not predictions:
        return {"table": [], "ece": None, "count": 0, "confidence": None, "accuracy": None,
                "text": "No saved predictions: this run's calibration cannot be measured."}
    confidence = [row["confidence"] for row in predictions]
    correct = [row["correct"] for row in predictions]
    table = calibration(confidence, correct, bins)
    ece = expected_calibration_error(table)
    mean_confidence, accuracy = float(np.mean(confidence)), float(np.mean(correct))
    return {"table": table, "ece": ece, "count": len(predictions), "confidence": mean_confidence,
            "accuracy": accuracy, "text": _calibration_words(ece, mean_confidence, accuracy, len(predictions))}


def _calibration_words(ece: float, mean_confidence: float, accuracy: float, count: int) -> str:
    # ECE above 10 points is not "roughly" anything: a stated 90 % would mean 80 % or 100 %
    quality = ("well calibrated" if ece < 0.05 else "somewhat off (a stated percentage is a rough guide)"
               if ece < 0.10 else "poorly calibrated: do not take its percentages at face value")
    if mean_confidence > accuracy + 0.02:
        lean = (f"Overall it is overconfident: {mean_confidence:.0%} sure on average, "
                f"but right {accuracy:.0%} of the time.")
    elif mean_confidence < accuracy - 0.02:
        lean = (f"Overall it is underconfident: {mean_confidence:.0%} sure on average, "
                f"yet right {accuracy:.0%} of the time.")
    else:
        lean = f"Overall its average confidence ({mean_confidence:.0%}) matches its accuracy ({accuracy:.0%})."
    text = (f"Expected calibration error {ece:.1%}: the confidence it states is off from how often it is "
            f"right by {100 * ece:.0f} percentage points on average, so it is {quality}. {lean}")
    if count < 100:
        text += f" With only {count} image{'s' if count != 1 else ''} this is a rough estimate."
    return text
