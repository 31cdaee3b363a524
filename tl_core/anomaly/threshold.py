"""The decision threshold: from good images alone (an expected false-alarm rate), or the best F1 on defects."""
from __future__ import annotations

import numpy as np

FALSE_ALARM_RATE = 0.02  # the share of good images expected above a threshold set from good images alone


def from_good(good_scores, false_alarm_rate: float = FALSE_ALARM_RATE) -> dict:
    """The (1 − rate) quantile of held-out good scores: about `rate` of new good images will be flagged."""
    scores = np.asarray(good_scores, dtype=float)
    value = float(np.quantile(scores, 1 - false_alarm_rate)) if len(scores) else float("inf")
    return {"value": value, "method": "good_quantile", "false_alarm_rate": false_alarm_rate,
            "words": f"set from {len(scores)} held-out good scores: about {false_alarm_rate:.0%} of good images "
                     f"are expected to be flagged (a false alarm); defects scoring below it are missed"}


def best_f1(scores, anomalous) -> dict:
    """The threshold with the best F1 on labelled images (defects positive); the midpoint between the two scores
    it separates, so it does not sit on a known image's score."""
    from sklearn.metrics import precision_recall_curve

    scores, anomalous = np.asarray(scores, dtype=float), np.asarray(anomalous, dtype=bool)
    precision, recall, cuts = precision_recall_curve(anomalous, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(cuts) else 0
    value = float(cuts[best]) if len(cuts) else float("inf")
    below = scores[scores < value]
    if len(below):
        value = float((value + below.max()) / 2)
    return {"value": value, "method": "best_f1", "f1": float(f1[best]) if len(cuts) else 0.0,
            "words": f"the best F1 ({f1[best]:.2f}) on {int(anomalous.sum())} defect and {int((~anomalous).sum())} "
                     "good labelled images"}


def confusion(scores, anomalous, threshold: float) -> dict:
    """Counts at a threshold: caught defects, missed defects, false alarms, good passed; with F1."""
    scores, anomalous = np.asarray(scores, dtype=float), np.asarray(anomalous, dtype=bool)
    flagged = scores >= threshold
    tp, fn = int((flagged & anomalous).sum()), int((~flagged & anomalous).sum())
    fp, tn = int((flagged & ~anomalous).sum()), int((~flagged & ~anomalous).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"caught": tp, "missed": fn, "false_alarms": fp, "passed": tn, "f1": round(f1, 4)}
