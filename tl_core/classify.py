"""The classify kind: one label per image, learnt by tl_core.fit's loop (a probe on frozen features, then
fine-tuning), with its options: the Auto plan, domain adaptation to target images, few-shot heads, class
weighting, growing a finished model. Registered in tl_core.kinds; the worker asks the registry, never this
module by name."""
from __future__ import annotations

from pathlib import Path

from . import adapt, kinds
from .config import RunConfig
from .fit.loop import Fit, standard_callbacks
from .fit.tasks import Task


def fit(config: RunConfig, run_dir: Path, emit, strategy=None, task: Task | None = None) -> dict:
    """Train a classifier: the loop with the standard callbacks, then a target domain's (after BestCheckpoint)."""
    return fit_with(Fit, config, run_dir, emit, strategy, task)


def fit_with(fit_class: type[Fit], config: RunConfig, run_dir: Path, emit, strategy=None,
             task: Task | None = None) -> dict:
    """`fit_class`'s run (Fit or a subclass) with the worker's listeners, the standard callbacks and the
    adaptation's, in that order; cancelled, it saves the best weights so far."""
    adaptation = adapt.plan_for(config)  # a target domain's callbacks and task; nothing without target images
    fit = fit_class(config, run_dir, emit.callbacks(*standard_callbacks(config), *adaptation.callbacks),
                    task or adaptation.task, strategy)
    return fit.run_until_stopped()


def plan(config: RunConfig, run_dir: Path, notice) -> RunConfig:
    """freeze="auto": measure the candidate plans on the user's images first; the run trains the one kept."""
    if config.freeze != "auto":
        return config
    from .plan import auto_plan

    return auto_plan.resolve(config, run_dir, notice)


def refine(config: RunConfig) -> str:
    """A dataset that came with a labels table trains a head per task: the multitask kind."""
    from .multitask import has_tasks

    return "multitask" if has_tasks(config) else "classify"


def ingest(folder: str | Path, labels: str | Path | None = None, tasks: list[str] | None = None,
           report=None) -> Path:
    """The dataset of a folder of class folders (made, or reused when the same images were ingested before);
    with `labels`, of the images a labels table names (a multi-task dataset), `report(text)` told each note
    and refused row."""
    if labels is None:
        from .data.datasets import ingest_or_reuse_folder

        return ingest_or_reuse_folder(folder).root
    from .data.datasets.labels_table import ingest_labelled_or_reuse_folder

    dataset = ingest_labelled_or_reuse_folder(folder, labels, tasks=tasks)
    for note in dataset.notes:
        (report or print)(f"note: {note}")
    for refused in dataset.refused:
        (report or print)(f"refused: {refused['name']}: {refused['reason']}")
    return dataset.root


kinds.register(kinds.TaskKind(
    name="classify", title="Classify images",
    summary="One label per image, learnt from a folder per class: the backbone's features, then as many of "
            "its layers as your images can teach.",
    layout="a folder per class, the images inside (any depth); or a CSV labels table beside the images",
    fit="tl_core.classify:fit", plan="tl_core.classify:plan", refine="tl_core.classify:refine",
    ingest="tl_core.classify:ingest", evaluate="tl_core.use.predict:evaluate_run",
    predictor="tl_core.use.predict:Predictor", export="tl_core.use.export:export_run",
    export_formats=("onnx", "torchscript", "safetensors"), after_fit="tl_core.use.grow:after_fit",
    metrics=("val_acc", "val_balanced_acc", "macro_f1", "val_loss")))
