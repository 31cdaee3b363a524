"""Registers the detect task kind: boxes around objects (tl_core.kinds)."""
from __future__ import annotations

from tl_core.kinds import TaskKind, register

# The detector's defaults that the app says in words too, here so the words come from the same numbers without
# importing torch (tl_core.detect.fit imports them).
DEFAULT_IMAGE_SIZE = 192  # small objects survive it; a CPU trains 100 pictures an epoch in seconds
AUTO_CANDIDATES = ("head", "top-3")  # frozen backbone against the last three stages trained
AUTO_EPOCHS = 4
AUTO_MARGIN = 0.05  # mAP@50 a larger plan must win by to be kept: a few validation pictures are noisy
AUTO_RULE = f"the simplest plan unless another's validation mAP@50 is higher by more than {AUTO_MARGIN}"

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
    # choice are the classifier's (its model, its bench); auto_words says what this kind's Auto plan does instead.
    options={"page": "kind_detect", "default_image_size": DEFAULT_IMAGE_SIZE, "classifier_plan_tools": False,
             "auto_words": f"Auto measures {' and '.join(AUTO_CANDIDATES)} (up to {AUTO_EPOCHS} epochs each) and "
                           f"keeps {AUTO_RULE}."},
))
