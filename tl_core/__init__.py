"""Transfer Learning Studio's engine: transfer learning of image models, without Streamlit.

The modules, in layers from the bottom up, are listed once, in LAYERS below (tests/test_architecture.py
checks it against the code): a module imports only modules of its own layer or of layers below it, and
no import goes round in a cycle. On top, tl_core.worker is one run's life, whoever starts it (the command
line, the job queue, Ray, torchrun); task kinds (tl_core.kinds) are the seam new kinds of learning plug into.

Command line: python -m tl_core {train, evaluate, predict, export, runs, shift, rank, grow, suspects, suggest}.
"""
import importlib

__version__ = "0.1.0"

# Bottom first. Each module: one idea, in a line (the module's own docstring says more).
LAYERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("settings", {
        "config": "RunConfig, the settings of one run: each field's default, type, help and checks",
    }),
    ("ops", {
        "ops.storage": "the workspace, atomic writes, reads that survive damage, a full disk said plainly",
        "ops.filecache": "results read from files, kept while the files' stamps (inode, mtime, size) are unchanged",
        "ops.runs": "the run folder: every run file's name, reading and writing; the OS locks of a run",
        "ops.words": "runs in words for a person: progress line, durations, validation protocol, a row per run",
        "ops.glossary": "the words of the trade (probe, layer groups, ECE...) explained once, for the help icons",
        "ops.jobs": "the local job queue: one worker process per run, device slots, claiming a run",
        "ops.executors": "where runs execute: the local queue or a Ray cluster (the Executor seam)",
        "ops.spaces": "who owns which run and dataset on a classroom server, and each user's limits",
        "ops.identities": "the server secret and the sign-in records behind the links: expiry, revocation",
        "ops.attempts": "rate limits shared by every session and server process: wrong codes, new names",
    }),
    ("kinds", {
        "kinds": "the task-kind registry: what a kind declares (data, fit, plan, evaluate, predict, export)",
    }),
    ("data", {
        "data.datasets": "a dataset package's public names",
        "data.datasets.images": "opening one image safely (bounded decoding)",
        "data.datasets.store": "the Dataset record; loading and listing datasets",
        "data.datasets.ingest": "folders, zips and uploads into a new dataset, every refusal said",
        "data.datasets.labels_table": "a CSV of labels per task beside the images",
        "data.datasets.unlabelled": "target images, any layout, the same checks",
        "data.datasets.audit": "counts, imbalance, duplicates, tiny images, in words",
        "data.datasets.splits": "seeded stratified splits and k folds",
        "data.datasets.pixels": "the decoded-image cache (resized once per size)",
        "data.datasets.versions": "relabel, move, drop or add images as a new dataset version",
        "data.augment": "augmentation presets on decoded images",
        "data.sample_data": "the bundled sample, and Fashion-MNIST for tests and benchmarks",
    }),
    ("models", {
        "models.devices": "the device and precision, named for a person",
        "models.backbones": "the catalogue, weight sources, create_model, preprocessing",
        "models.layers": "layer groups (timm's group_matcher), the freeze plan, BatchNorm policies",
        "models.multilayer": "a head on every stage's pooled outputs (Head2Toe)",
        "models.frozen_prefix": "a model cut into a frozen prefix, run once, and a trainable rest",
    }),
    ("fit", {
        "fit.strategy": "the Strategy seam: device, precision, backward, step; sharding and agreement",
        "fit.tasks": "the Task seam: what one training step computes (classification)",
        "fit.batches": "where a batch comes from: pixels, cached prefix activations, cached features",
        "fit.callbacks": "the closed event list and the loop's listeners; Emitter for a kind's own fit",
        "fit.optim": "layer-wise learning rates and the schedule",
        "fit.regularize": "L2-SP: a pull of the learning weights back toward the pretrained ones (measured, off by default)",
        "fit.probe": "logistic-regression heads on frozen features (L-BFGS), folded into a Linear",
        "fit.prototypes": "prototype heads for few-shot sets",
        "fit.run_data": "the images of a run and how they validate: held out, separate, k folds",
        "fit.imbalance": "whether a run weights its classes, and the sentence that says so",
        "fit.metrics": "a classifier's metrics: accuracy, per class, confusion matrix",
        "fit.outputs": "what a finished fit writes: kept weights, predictions, metrics",
        "fit.state": "the fit's state: the Net (model and groups), the batch Sources, the Progress",
        "fit.probe_phase": "the first phase: the head on the frozen features",
        "fit.finetune": "the second phase: chosen groups trained on images, restarted lower if it diverges",
        "fit.loop": "the fit loop (Fit): prepare, the two phases, save; announcing the events",
    }),
    ("methods", {
        "adapt": "domain adaptation to target images: shift meter, AdaBN, alignment, DANN",
        "multitask": "several tasks from a labels table: the heads side by side, the joint loss, per-task metrics",
        "multitask.fit": "the Fit of a multi-task run",
        "multitask.outputs": "what a multi-task run writes",
        "plan.plan_cost": "what a plan costs here, timed on one warm batch",
        "plan.expectations": "what each plan is expected to give at a dataset's size: the bench's figures, then a run's own",
        "plan.auto_plan": "the Auto plan: candidate plans measured as small runs, the simplest kept",
        "plan.ranking": "which backbone suits the images: a cross-validated probe on each one's features",
        "classify": "the classify kind: the loop with the Auto plan and adaptation (registered in kinds)",
        "multitask.kind": "the multitask kind (registered in kinds)",
        "detect.formats": "COCO, YOLO and Pascal VOC (folder or zip) into one boxes record in the workspace",
        "detect.audit": "boxes outside, degenerate, duplicate or of unknown classes; sizes; pictures without boxes",
        "detect.batches": "pictures decoded once and stretched to a square, boxes scaled alike",
        "detect.augment": "box-aware flips, zooms and crops (torchvision.transforms.v2)",
        "detect.model": "a timm body, a feature pyramid and torchvision's FCOS; the classifier's layer groups",
        "detect.evaluate": "mAP (torchmetrics), per-class AP, PR curves, a confusion with background",
        "detect.fit": "the detector's loop and its Auto plan, announcing the closed event list",
        "detect.predict": "a finished detection run: boxes, labels and scores of a picture",
        "detect.export": "ONNX with NMS inside, verified with ONNX Runtime; the bundle",
        "detect.editing": "boxes drawn or edited in the app, saved as a new dataset version",
        "detect.plots": "detection figures and pictures with boxes drawn",
        "detect.sample": "scenes of objects pasted on varied backgrounds, for tests and the bench",
        "detect.kind": "the detect kind (registered in kinds)",
    }),
    ("use", {
        "use.predict": "a finished run as a classifier; evaluation on labelled images",
        "use.heldout": "a finished classifier tested on a labelled set it never saw, kept in the run folder",
        "use.novelty": "'looks like none of these': distance to the training images' features, its threshold",
        "use.batch": "many pictures at once: a zip's pictures, a row of predictions each, their CSV",
        "use.classroom": "the teacher's table: a row per run with student, names, progress; no None shown",
        "use.explain": "Grad-CAM heat maps",
        "use.export": "verified ONNX / TorchScript / safetensors bundles",
        "use.run_facts": "a finished run's facts, each worked out once: name, accuracy and interval, images, wall",
        "use.model_card": "the bundle's MODEL_CARD.md",
        "use.bundle": "an exported bundle's file names",
        "use.bundle.predict_example": "the standalone program shipped in every bundle",
        "use.bundle.detect_predict_example": "the standalone program of a detection bundle: draws the boxes",
        "use.bundle.predict_anomaly": "the standalone program of an anomaly bundle: score, verdict, heat map",
        "use.compare": "the from-scratch baseline and the transfer verdict; a model per task (sharing verdict)",
        "use.grow": "a finished model grown with new images or classes; its old classes' recall",
        "use.advice": "what to try next, in words, from what a run measured",
        "plots": "plotly figures from events and metrics",
        # the anomaly kind sits here, not with the methods: its export reuses the bundle's (use.export)
        "anomaly.data": "anomaly: the layouts (MVTec AD, good/, a plain folder) ingested safely; test folders read in place",
        "anomaly.features": "anomaly: locally aware patch features from mid-level stages of a timm backbone, cached",
        "anomaly.memory": "anomaly: greedy coreset subsampling; nearest-neighbour patch distances",
        "anomaly.model": "anomaly: the plain torch module: extractor + memory bank + scorer",
        "anomaly.audit": "anomaly: a good image that scores far outside the others",
        "anomaly.threshold": "anomaly: the threshold from good images (a false-alarm rate) or the best F1 on defects",
        "anomaly.metrics": "anomaly: image AUROC, pixel AUROC, per-defect AUROC",
        "anomaly.fit": "anomaly: the kind's fit: features, bank, held-out scores, threshold, run outputs",
        "anomaly.evaluate": "anomaly: a finished run on a labelled test folder",
        "anomaly.predict": "anomaly: score, verdict and heat map of one image",
        "anomaly.export": "anomaly: one ONNX graph verified with ONNX Runtime, and the bundle",
        "anomaly.overlay": "anomaly: a heat map drawn over its image",
        "anomaly.results": "anomaly: a finished run read back for the app (no torch)",
        "anomaly.synthetic": "anomaly: realistic synthetic defects on textures, for tests and the bench",
        "anomaly.plots": "anomaly: plotly figures for the app",
        "anomaly.kind": "the anomaly kind (registered in kinds)",
    }),
    ("quality", {
        "quality.label_errors": "likely label errors (cleanlab), fixed as a new dataset version",
        "quality.active": "which unlabelled images to label next",
        "quality.image_checks": "pictures to look at again: blank, blurry, enlarged past 2× to the input size",
    }),
    ("worker", {
        "worker": "one run's life, whoever starts it: claim, status, the kind's plan and fit, checks, the last word",
        "distributed": "torchrun: the Strategy of one process among several (DDP through Lightning Fabric)",
    }),
    ("entry", {
        "__main__": "the command line",
    }),
)

# The public API, by module; imported on first use so `import tl_core` stays cheap.
_API = {
    "config": ["RunConfig", "ConfigError"],
    "models.backbones": ["CATALOGUE", "catalogue_rows", "search_models", "create_model", "data_config",
                  "weights_available_offline", "WeightsUnavailable"],
    "models.layers": ["layer_groups", "parse_freeze", "apply_freeze"],
    "data.datasets": ["ingest_folder", "ingest_zip", "ingest_files", "load_dataset", "list_datasets", "audit",
                 "open_image", "DatasetError", "ImageRefused", "new_version"],
    "quality.label_errors": ["suspects", "fix_labels", "retrain_config"],
    "quality.active": ["suggest", "add_labelled"],
    "ops.runs": ["create_run", "list_runs", "read_status", "read_events", "read_metrics", "request_stop"],
    "worker": ["run"],
    "ops.jobs": ["JobManager"],
    "use.predict": ["Predictor", "evaluate_folder"],
    "use.export": ["export_run", "ExportMismatch"],
    "use.explain": ["explain_image"],
    "use.compare": ["scratch_config", "transfer_verdict"],
}
_MODULE_OF = {name: module for module, names in _API.items() for name in names}
__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'tl_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
