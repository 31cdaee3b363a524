"""The multitask kind: several labels per image from a labels table (a head per task, single- or
multi-label), on one shared backbone. Registered in tl_core.kinds; the same loop as classify with
multitask.fit.MultiTaskFit in place of Fit."""
from __future__ import annotations

from pathlib import Path

from .. import kinds
from ..classify import fit_with
from ..config import RunConfig
from ..fit.tasks import Task
from .fit import MultiTaskFit


def fit(config: RunConfig, run_dir: Path, emit, strategy=None, task: Task | None = None) -> dict:
    """Train every task's head (and the shared layers the plan names) jointly."""
    return fit_with(MultiTaskFit, config, run_dir, emit, strategy, task)


def plan(config: RunConfig, run_dir: Path, notice) -> RunConfig:
    """Several tasks have no Auto plan yet: feature extraction, a head per task, and the notice that says so."""
    if config.adapt != "none" and config.target_dir:
        raise ValueError("domain adaptation of a multi-task run is not supported yet: choose adapt none")
    if config.freeze != "auto":
        return config
    notice("several tasks: feature extraction, a head per task "
           "(choose top-N or all to fine-tune the shared layers for every task at once)")
    return config.replace(freeze="head")


def ingest(folder: str | Path, labels: str | Path | None = None, tasks: list[str] | None = None,
           report=None) -> Path:
    """The dataset of the images a labels table names (see tl_core.classify.ingest)."""
    if labels is None:
        raise ValueError(f"{folder}: a multi-task run learns from a labels table: give it (--labels FILE.csv)")
    from ..classify import ingest as ingest_images

    return ingest_images(folder, labels, tasks, report)


kinds.register(kinds.TaskKind(
    name="multitask", title="Several labels per image",
    summary="A labels table gives each image a label per task (or several tags): one backbone, a head per task.",
    layout="the images in any layout, with a CSV labels table: file, then one column per task (or tags)",
    fit="tl_core.multitask.kind:fit", plan="tl_core.multitask.kind:plan", ingest="tl_core.multitask.kind:ingest",
    evaluate="tl_core.use.predict:evaluate_run", predictor="tl_core.use.predict:Predictor",
    export="tl_core.use.export:export_run", export_formats=("onnx", "torchscript", "safetensors"),
    after_fit="tl_core.use.grow:after_fit", metrics=("val_acc", "val_loss")))  # val_acc: the tasks' mean score
