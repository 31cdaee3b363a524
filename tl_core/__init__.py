"""Transfer Learning Studio's engine: transfer learning of image classifiers, without Streamlit.

Modules, one idea each:
    config      RunConfig, the settings of one run
    backbones   the catalogue, weight sources, create_model, preprocessing
    layers      layer groups and the freeze plan
    datasets    safe ingest, audit, split, decoded-image cache
    augment     augmentation presets on decoded images
    train       the fit loop (phases: probe on frozen features, then fine-tune)
    callbacks   event log, stop, early stopping, best checkpoint, NaN guard
    evaluate    metrics;  predict: a finished run as a classifier
    runs, jobs  the run folder contract; the worker-process queue
    plots       plotly figures from events and metrics

Command line: python -m tl_core {train, evaluate, predict, export, runs}.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
