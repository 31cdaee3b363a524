"""Anomaly metrics from scores and maps: image AUROC, pixel AUROC, per-defect-type AUROC (scikit-learn)."""
from __future__ import annotations

import numpy as np

from tl_core.anomaly.threshold import confusion


def auroc(labels, scores) -> float | None:
    """ROC AUC, or None when only one kind of label is present (it is undefined then)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=bool)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def summarize(labels: list[str], scores, threshold: float, masks: list | None = None, maps: list | None = None,
              ) -> dict:
    """Image AUROC over all defects and per defect type (each against the good images), F1 and the confusion
    at `threshold`, and pixel AUROC over the images whose masks are known (good images count as all-normal)."""
    labels = list(labels)
    scores = np.asarray(scores, dtype=float)
    anomalous = np.array([label != "good" for label in labels])
    good = ~anomalous
    per_type = {}
    for defect in sorted(set(labels) - {"good"}):
        pick = good | (np.array(labels) == defect)
        per_type[defect] = {"images": int((np.array(labels) == defect).sum()),
                            "image_auroc": auroc(anomalous[pick], scores[pick])}
    result = {"image_auroc": auroc(anomalous, scores), "threshold": float(threshold),
              **confusion(scores, anomalous, threshold), "per_defect": per_type,
              "images": len(labels), "good_images": int(good.sum()), "defect_images": int(anomalous.sum())}
    result["pixel_auroc"] = None
    if masks is not None and maps is not None:
        result.update(_pixel_auroc(labels, masks, maps, per_type))
    return result


def _pixel_auroc(labels, masks, maps, per_type) -> dict:
    """Pixels of every good image (all normal) and of every defect image with a mask."""
    used = [(label, mask, amap) for label, mask, amap in zip(labels, masks, maps)
            if label == "good" or mask is not None]
    if not any(label != "good" for label, _, _ in used):
        return {"pixel_auroc": None, "pixel_note": "no masks: image scores only"}
    truth = np.concatenate([(mask if mask is not None else np.zeros(amap.shape, bool)).ravel()
                            for _, mask, amap in used])
    values = np.concatenate([amap.ravel() for _, _, amap in used])
    for defect in per_type:
        pick = [(m if m is not None else np.zeros(a.shape, bool), a) for label, m, a in used if label == defect]
        if pick:
            per_type[defect]["pixel_auroc"] = auroc(np.concatenate([m.ravel() for m, _ in pick]),
                                                    np.concatenate([a.ravel() for _, a in pick]))
    return {"pixel_auroc": auroc(truth, values), "masked_images": sum(label != "good" for label, _, _ in used)}
