"""Registers the detect task kind: boxes around objects (tl_core.kinds)."""
from __future__ import annotations

from tl_core.kinds import TaskKind, register

DETECT = register(TaskKind(
    name="detect",
    title="Detect objects",
    summary="Find where things are: a box, a class and a score for each object in a picture.",
    layout="pictures with boxes: COCO (images/ + annotations.json), YOLO (images/, labels/*.txt, data.yaml or "
           "classes.txt) or Pascal VOC (.xml files), as a folder or a zip",
    fit="tl_core.detect.fit:fit",
    ingest="tl_core.detect.formats:ingest",
    evaluate="tl_core.detect.evaluate:evaluate_run",
    predictor="tl_core.detect.predict:DetectPredictor",
    export="tl_core.detect.export:export_run",
    export_formats=("onnx",),
    detect_layout="tl_core.detect.formats:detect_layout",
    metrics=("map50", "map"),
    # plan_expectations: the Layers page's expected accuracies per plan are the classifier's bench figures
    options={"page": "kind_detect", "default_augment": "light", "default_image_size": 192,
             "plan_expectations": False},
))
