"""Transfer Learning Studio's engine: transfer learning of image classifiers, without Streamlit.

Modules, one idea each:
    config      RunConfig, the settings of one run
    backbones   the catalogue, weight sources, create_model, preprocessing
    layers      layer groups and the freeze plan
    datasets/   a package: images (safe decoding), store, ingest, audit, splits, pixels (decoded-image cache)
    augment     augmentation presets on decoded images
    train       the fit loop (phases: probe on frozen features, then fine-tune), its events
    tasks       what a training step computes (Task seam; classification by default)
    batches     where a batch comes from: pixels, cached frozen-prefix activations, cached features
    strategy    the device, precision, backward and step (Strategy seam; single device today)
    run_data    the images of a run and how they validate (held out, separate set, k folds)
    optim       layer-wise learning rates from the layer groups, and the schedule
    probe       logistic-regression heads on frozen features, fitted by L-BFGS
    frozen_prefix  a model run as a frozen prefix, computed once, and a trainable rest
    outputs     what a finished fit writes: kept weights, predictions, metrics
    callbacks   event log, stop, divergence guard, early stopping, best checkpoint, NaN guard
    evaluate    metrics;  predict: a finished run as a classifier
    imbalance   whether a run weights its classes (1/count), and the sentence that says so
    label_errors  likely label errors from a run's out-of-fold predictions (cleanlab), fixed as a new dataset version
    active      which unlabelled images to label next (uncertainty × distance, greedy k-center)
    runs, jobs  the run folder contract; the worker-process queue
    plots       plotly figures from events and metrics
    export      verified ONNX / TorchScript / safetensors bundles;  model_card: the bundle's MODEL_CARD.md
    bundle/     predict_example.py, the standalone program shipped in every bundle (predict_anomaly.py: an anomaly run's)
    kinds       the task-kind registry;  anomaly/: the "anomaly" kind (good images only, PatchCore-style)

Command line: python -m tl_core {train, evaluate, predict, export, runs, shift, rank, grow, suspects, suggest}.
"""
import importlib

__version__ = "0.1.0"

# The public API, by module; imported on first use so `import tl_core` stays cheap.
_API = {
    "config": ["RunConfig", "ConfigError"],
    "backbones": ["CATALOGUE", "catalogue_rows", "search_models", "create_model", "data_config",
                  "weights_available_offline", "WeightsUnavailable"],
    "layers": ["layer_groups", "parse_freeze", "apply_freeze"],
    "datasets": ["ingest_folder", "ingest_zip", "ingest_files", "load_dataset", "list_datasets", "audit",
                 "open_image", "DatasetError", "ImageRefused", "new_version"],
    "label_errors": ["suspects", "fix_labels", "retrain_config"],
    "active": ["suggest", "add_labelled"],
    "runs": ["create_run", "list_runs", "read_status", "read_events", "read_metrics", "request_stop"],
    "train": ["run"],
    "jobs": ["JobManager"],
    "predict": ["Predictor", "evaluate_folder"],
    "export": ["export_run", "ExportMismatch"],
    "explain": ["explain_image"],
    "compare": ["scratch_config", "transfer_verdict"],
}
_MODULE_OF = {name: module for module, names in _API.items() for name in names}
__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'tl_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
