"""Evaluating a finished anomaly run on a labelled test folder it never saw (MVTec's test/ + ground_truth/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_core.anomaly.data import read_mask, read_test_folder
from tl_core.anomaly.metrics import summarize
from tl_core.anomaly.predict import AnomalyPredictor
from tl_core.data.datasets import ImageRefused, open_image

BATCH = 16


def evaluate(run_dir: str | Path, data_dir: str | Path) -> dict:
    """Image AUROC, pixel AUROC (when masks exist), threshold, F1 and per-defect AUROC on `data_dir`;
    refused files and masks that match nothing are listed, never fatal."""
    samples, refused, notes = read_test_folder(data_dir)
    predictor = AnomalyPredictor(run_dir)
    size, trained = predictor.size, predictor.geometry.get("train_size") or []
    kept, scores, maps, resized = [], [], [], 0
    for start in range(0, len(samples), BATCH):
        images = []
        for sample in samples[start:start + BATCH]:
            try:
                image = open_image(sample.path, str(sample.path))
            except ImageRefused as refusal:
                refused.append({"name": str(sample.path), "reason": refusal.reason})
                continue
            resized += bool(trained) and list(image.size) != list(trained)
            images.append(image)
            kept.append(sample)
        if images:
            batch_scores, batch_maps = predictor.score_images(images)
            scores.extend(batch_scores)
            maps.extend(batch_maps)
    if not kept:
        raise ValueError(f"{data_dir}: no usable test image (good/ and <defect>/ folders of images)")
    masks = []
    for sample in kept:
        try:
            masks.append(read_mask(sample.mask, (size, size)) if sample.mask else None)
        except ImageRefused as refusal:
            refused.append({"name": str(sample.mask), "reason": f"mask not used: {refusal.reason}"})
            masks.append(None)
    if resized:
        notes.append(f"{resized} test image(s) differ in size from the good images ({trained[0]}×{trained[1]}): "
                     f"each was resized whole to {size}×{size}")
    report = summarize([s.label for s in kept], np.asarray(scores), predictor.threshold, masks, maps)
    if not any(s.anomalous for s in kept):
        notes.append("no defect folder: AUROC needs defects; only the false alarms among good images are counted")
    return {**report, "threshold_method": predictor.threshold_record.get("method"), "notes": notes,
            "refused": refused, "worst": _worst(kept, scores)}


def _worst(samples, scores, shown: int = 10) -> list[dict]:
    order = np.argsort(-np.asarray(scores))[:shown]
    return [{"image": str(samples[i].path), "label": samples[i].label, "score": round(float(scores[i]), 4)}
            for i in order]
