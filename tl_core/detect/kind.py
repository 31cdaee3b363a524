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
    # classifier_plan_tools False: the Layers page's time budget, cost estimate, expected accuracies and feature
    # choice are the classifier's (its model, its bench); auto_words says what this kind's Auto plan does instead
    # (tl_core.detect.fit: AUTO_CANDIDATES, AUTO_MARGIN; not imported here, as it imports torch).
    options={"page": "kind_detect", "default_image_size": 192, "classifier_plan_tools": False,
             "auto_words": "Auto trains the frozen backbone and the top three layer groups for a few epochs each "
                           "and keeps the top three only if their validation mAP@50 is higher by more than 0.05."},
))
