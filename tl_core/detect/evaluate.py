"""How good a detector's boxes are: mAP@50 and mAP@[.5:.95] (torchmetrics' MeanAveragePrecision on pycocotools),
per-class AP, precision-recall curves, and a confusion of classes with "background" (missed objects, false alarms).

`box_metrics` works on predictions already made (the fit's validation, a finished run's `evaluate`);
`evaluate_run` is the kind's `evaluate(run_dir, data_dir)`: a run's detector on a box dataset it never saw.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.ops import box_iou

BACKGROUND = "background"
MATCH_IOU = 0.5  # a prediction finds its object at this overlap (the IoU of mAP@50)
CONFUSION_SCORE = 0.3  # the score a prediction needs to count in the confusion and the gallery (predict's default)


def box_metrics(predictions: list[dict], targets: list[dict], classes: list[str],
                score_threshold: float = CONFUSION_SCORE) -> dict:
    """{"map50", "map", "per_class": {name: {"ap50", "ap", "objects"}}, "pr_curves", "confusion", ...}."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, extended_summary=True, backend="pycocotools")
    metric.update([_cpu(p) for p in predictions], [_cpu(t) for t in targets])
    result = metric.compute()
    present = [int(k) for k in torch.atleast_1d(result["classes"]).tolist()]
    precision = result["precision"]  # IoU thresholds × 101 recall points × classes × areas × max detections
    recall_points = torch.linspace(0, 1, precision.shape[1]).tolist() if precision.ndim == 5 else []
    objects = torch.bincount(torch.cat([t["labels"].cpu() for t in targets] or [torch.zeros(0, dtype=torch.long)]),
                             minlength=len(classes)).tolist()
    per_class, curves = {}, {}
    ap_all = torch.atleast_1d(result["map_per_class"]).tolist()
    for name_index, name in enumerate(classes):
        if name_index not in present or precision.ndim != 5:
            per_class[name] = {"ap50": None, "ap": None, "objects": objects[name_index]}
            continue
        column = present.index(name_index)
        at50 = precision[0, :, column, 0, -1]  # IoU 0.5, every area, the most detections
        valid = at50 > -1
        per_class[name] = {"ap50": _number(at50[valid].mean()) if valid.any() else None,
                           "ap": _number(ap_all[column]) if column < len(ap_all) else None,
                           "objects": objects[name_index]}
        curves[name] = {"recall": recall_points, "precision": [max(float(v), 0.0) for v in at50.tolist()]}
    confusion = confusion_with_background(predictions, targets, len(classes), score_threshold)
    return {"map50": _number(result["map_50"]), "map": _number(result["map"]), "map75": _number(result["map_75"]),
            "mar100": _number(result["mar_100"]), "per_class": per_class, "pr_curves": curves,
            "confusion_labels": [*classes, BACKGROUND], "box_confusion": confusion,
            "confusion_score": score_threshold, "confusion_iou": MATCH_IOU,
            "images": len(targets), "objects": int(sum(objects))}


def map_scores(predictions: list[dict], targets: list[dict]) -> dict:
    """{"map50", "map"} only: the check after each epoch. Per-class figures make torchmetrics run COCO's
    evaluation once more per class (8× the time with an untrained head's hundred boxes a picture)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    metric.update([_cpu(p) for p in predictions], [_cpu(t) for t in targets])
    result = metric.compute()
    return {"map50": _number(result["map_50"]), "map": _number(result["map"])}


def confusion_with_background(predictions: list[dict], targets: list[dict], n_classes: int,
                              score_threshold: float = CONFUSION_SCORE) -> list[list[int]]:
    """(K+1)×(K+1) counts, rows the truth and columns the prediction, the last of each "background": a missed
    object is (class, background), a false alarm (background, class). Each prediction at or above the score,
    best first, takes the unmatched true box it overlaps most (IoU ≥ MATCH_IOU), of any class."""
    table = [[0] * (n_classes + 1) for _ in range(n_classes + 1)]
    for errors in per_image_errors(predictions, targets, score_threshold):
        for truth, predicted in errors["pairs"]:
            table[n_classes if truth is None else truth][n_classes if predicted is None else predicted] += 1
    return table


def per_image_errors(predictions: list[dict], targets: list[dict], score_threshold: float) -> list[dict]:
    """Per picture: its (truth, prediction) pairs (None for background) and how many are wrong."""
    report = []
    for prediction, target in zip(predictions, targets):
        keep = prediction["scores"].cpu() >= score_threshold
        boxes, labels = prediction["boxes"].cpu()[keep], prediction["labels"].cpu()[keep]
        order = torch.argsort(prediction["scores"].cpu()[keep], descending=True)
        true_boxes, true_labels = target["boxes"].cpu(), target["labels"].cpu()
        overlaps = box_iou(boxes, true_boxes) if len(boxes) and len(true_boxes) else torch.zeros(len(boxes), len(true_boxes))
        taken, pairs = set(), []
        for i in order.tolist():
            candidates = [(float(overlaps[i, j]), j) for j in range(len(true_boxes))
                          if j not in taken and overlaps[i, j] >= MATCH_IOU]
            if candidates:
                j = max(candidates)[1]
                taken.add(j)
                pairs.append((int(true_labels[j]), int(labels[i])))
            else:
                pairs.append((None, int(labels[i])))
        pairs += [(int(true_labels[j]), None) for j in range(len(true_boxes)) if j not in taken]
        report.append({"pairs": pairs, "wrong": sum(1 for truth, predicted in pairs if truth != predicted)})
    return report


def evaluate_run(run_dir: str | Path, data_dir: str | Path) -> dict:
    """The kind's evaluate: a finished run's detector on a box dataset (a folder or zip in COCO, YOLO or VOC)."""
    from tl_core.detect.formats import ingest, load_boxset
    from tl_core.detect.predict import DetectPredictor

    predictor = DetectPredictor(run_dir)
    boxset = load_boxset(ingest(data_dir))
    unknown = sorted(set(boxset.classes) - set(predictor.classes))
    predictions, targets, skipped = predictor.predict_boxset(boxset)
    report = box_metrics(predictions, targets, predictor.classes)
    report.pop("pr_curves")
    report["dataset"] = str(boxset.root)
    report["skipped"] = skipped
    if unknown:
        report["note"] = f"classes the model does not know, not scored: {', '.join(unknown)}"
    return report


def _cpu(item: dict) -> dict:
    return {key: value.detach().cpu() for key, value in item.items()}


def _number(value) -> float | None:
    value = float(value)
    return None if value < 0 else round(value, 6)  # torchmetrics says -1 where there was nothing to score
