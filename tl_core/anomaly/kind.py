"""Registers the anomaly task kind (tl_core.kinds): good images in, a score and a heat map out."""
from __future__ import annotations

from pathlib import Path

from tl_core.kinds import TaskKind, register


def ingest(folder) -> Path:
    """The kind's ingest hook: the anomaly dataset made (or reused) from `folder`."""
    from tl_core.anomaly.data import ingest_anomaly_or_reuse_folder

    return ingest_anomaly_or_reuse_folder(folder).root


ANOMALY = register(TaskKind(
    name="anomaly",
    title="Spot anomalies",
    summary="Learn what good looks like from good images only; new images get a score, a verdict and a heat map "
            "of where they differ.",
    layout="good images (a folder, or good/ beside optional defect folders), or MVTec AD "
           "(train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png)",
    fit="tl_core.anomaly.fit:fit",
    ingest="tl_core.anomaly.kind:ingest",
    evaluate="tl_core.anomaly.evaluate:evaluate",
    predictor="tl_core.anomaly.predict:predictor",
    export="tl_core.anomaly.export:export",
    export_formats=("onnx",),
    detect_layout="tl_core.anomaly.data:detect_layout",
    metrics=("image_auroc", "pixel_auroc", "f1", "threshold"),
    options={"min_good_images": 5},
))
