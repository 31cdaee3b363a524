"""Object detection, a task kind (tl_core.kinds): boxes, classes and scores for the objects in a picture.

One idea a module:
    formats   COCO JSON, YOLO and Pascal VOC (folder or zip) into one box dataset in the workspace
    audit     what is wrong or thin in a box dataset, listed; nothing dropped
    batches   pictures decoded once at a square input size, boxes scaled alike; the hold-out split
    augment   box-aware flips, scale jitter and crops (torchvision.transforms.v2)
    model     a timm backbone, a feature pyramid and torchvision's FCOS head; layer groups from timm
    fit       the training loop, the Auto plan, the run's outputs
    evaluate  mAP (torchmetrics / pycocotools), per-class AP, PR curves, confusion with background
    predict   a finished run's boxes for a picture
    export    ONNX with NMS inside, verified with ONNX Runtime; the bundle's standalone program
    plots     plotly figures and pictures with boxes drawn, for the app
    sample    small real-looking sets (objects pasted on backgrounds) for tests, the bench and a first try
    kind      the registration
"""
