"""A finished anomaly run read back for the app (no torch): its scored images, their heat maps, its audit.

scores.csv holds every image the fit scored: the good training images (each against the others, held out by
leave-one-out) and the labelled test images (against the whole bank), with a row of anomaly_maps.npy each.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from tl_core.anomaly.metrics import auroc
from tl_core.anomaly.overlay import overlay
from tl_core.ops.runs import RunFolder, read_config, read_metrics
from tl_core.ops.storage import read_json


def scored_images(run_dir: str | Path) -> list[dict]:
    """One row per scored image: image (absolute path), name, label, split, score, anomalous, map_row."""
    folder = RunFolder(run_dir)
    if not folder.scores.is_file():
        return []
    root = Path(read_config(run_dir).dataset_dir)
    rows = []
    with open(folder.scores, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append({"image": str(root / row["image"]), "name": row["image"], "label": row["label"],
                         "split": row["split"], "score": float(row["score"]), "anomalous": row["label"] != "good",
                         "map_row": int(row["map_row"]) if row["map_row"] else None})
    return rows


def threshold_record(run_dir: str | Path) -> dict:
    """threshold.json: {"value", "method", "words", ...}; {} before the run is done."""
    return read_json(RunFolder(run_dir).threshold) or {}


def summary(run_dir: str | Path) -> dict:
    """The run's metrics, with the ROC inputs: held-out good scores against labelled defect scores."""
    rows = scored_images(run_dir)
    labels = [row["anomalous"] for row in rows]
    scores = [row["score"] for row in rows]
    return {"metrics": read_metrics(Path(run_dir)) or {}, "threshold": threshold_record(run_dir),
            "labels": labels, "scores": scores, "roc_auroc": auroc(labels, scores) if rows else None}


def gallery(run_dir: str | Path, threshold: float, limit: int = 24) -> list[dict]:
    """The labelled test images, worst first, each with its verdict at `threshold` and how it is marked:
    "missed defect", "false alarm", or "" when the verdict is right."""
    items = []
    for row in scored_images(run_dir):
        if row["map_row"] is None:
            continue
        flagged = row["score"] >= threshold
        mark = "missed defect" if row["anomalous"] and not flagged else \
            "false alarm" if flagged and not row["anomalous"] else ""
        items.append({**row, "flagged": flagged, "mark": mark})
    return sorted(items, key=lambda item: -item["score"])[:limit]


def heat_overlay(run_dir: str | Path, item: dict, threshold: float) -> Image.Image | None:
    """A gallery item's image with its stored heat map over it; None when the image cannot be read."""
    from tl_core.data.datasets import ImageRefused, open_image

    maps = np.load(RunFolder(run_dir).anomaly_maps, mmap_mode="r")
    try:
        image = open_image(item["image"], item["name"], draft_size=512)
    except (ImageRefused, OSError):
        return None
    return overlay(image, np.asarray(maps[item["map_row"]], np.float32), threshold)


def outliers(run_dir: str | Path) -> list[dict]:
    """Good images the audit found far outside the others: {name, image (absolute path), score, message}."""
    metrics = read_metrics(Path(run_dir)) or {}
    root = Path(read_config(run_dir).dataset_dir)
    return [{**found, "image": str(root / found["name"])} for found in metrics.get("outliers", [])]
