"""Comparing runs: what differs between them, the from-scratch baseline, and what transfer bought."""
from __future__ import annotations

from pathlib import Path

from ..config import PROBE_EPOCHS_BEFORE_FINETUNE, RunConfig
from ..ops.runs import RunFolder, read_config, read_config_record, read_events, read_metrics
from ..ops.words import validation_protocol
from .run_facts import learnt

# Settings a person compares; the rest (paths, seeds) only clutters the table.
COMPARED_SETTINGS = ("backbone", "weights", "freeze", "epochs", "lr", "batch_size", "augment", "image_size",
                     "bn_policy", "schedule", "label_smoothing", "weight_decay", "probe_first")


def settings_table(run_dirs: list[Path]) -> list[dict]:
    """One row per setting and score, one column per run; `differs` marks the rows that are not all alike.
    The first rows say what the scores were measured on: the dataset and the validation protocol (scores
    of a 5-fold cross-validation and of a 20 % hold-out are not the same measurement)."""
    records = [{**read_config_record(d).get("config", {}), **_built(d)} for d in run_dirs]
    metrics = [read_metrics(d) or {} for d in run_dirs]
    rows = []
    for key, values in (("dataset", [_dataset_name(r.get("dataset_dir")) for r in records]),
                        ("validation", [validation_protocol(m) for m in metrics])):
        rows.append({"setting": key, "values": values, "differs": len({repr(v) for v in values}) > 1})
    for key in COMPARED_SETTINGS:
        values = [r.get(key) for r in records]
        rows.append({"setting": key, "values": values, "differs": len({repr(v) for v in values}) > 1})
    for key in ("val_acc", "macro_f1", "val_loss", "best_epoch", "wall_s", "learnt_params"):
        # what the kept model learnt (the probe's head when fine-tuning never beat it), as Results says
        values = [learnt(m)["learnt_params"] if key == "learnt_params" else m.get(key) for m in metrics]
        rows.append({"setting": key, "values": values, "differs": len({repr(v) for v in values}) > 1})
    return rows


def _dataset_name(root) -> str | None:
    """A dataset's own name (the one the user gave), else its folder's name."""
    from ..data.datasets import DatasetError, load_dataset

    if not root:
        return None
    try:
        return load_dataset(root).name
    except (DatasetError, OSError, ValueError):
        return Path(str(root)).name


def _built(run_dir: Path) -> dict:
    """The architecture a finished run really built ("efficientnet_lite0" + embedded is the TF port)."""
    from ..ops.storage import read_json

    built = (read_json(RunFolder(run_dir).preprocess) or {}).get("backbone")
    return {"backbone": built} if built else {}


def curves(run_dirs: list[Path], names: list[str] | None = None) -> dict[str, list[dict]]:
    """{run name: its events}, for tl_core.plots.compare_figure."""
    names = names or [Path(d).name for d in run_dirs]
    return {name: read_events(d) for name, d in zip(names, run_dirs)}


def scratch_config(config: RunConfig, of_run: str) -> RunConfig:
    """The same architecture, data and budget without pretrained weights: every layer must learn.

    A frozen random backbone would be meaningless, so the whole network trains, with no probe phase
    (random features have nothing to probe) and the epochs the transfer run had in all.
    """
    probe = PROBE_EPOCHS_BEFORE_FINETUNE if config.freeze != "head" and config.probe_first else 0
    epochs = config.epochs + probe
    from ..models.backbones import architecture_for

    # The architecture the pretrained run really built (efficientnet_lite0 + embedded is the TF port).
    return config.replace(backbone=architecture_for(config.backbone, config.weights), weights="none", freeze="all", probe_first=False, augment=config.augment,
                          epochs=epochs, warmup_epochs=min(config.warmup_epochs, epochs),
                          name=f"{config.name or config.backbone} from scratch",
                          parent_run=of_run)


def start_scratch_baseline(jobs, run_dir: Path) -> Path:
    """Queue the from-scratch twin of a finished run; returns the new run folder."""
    return jobs.submit(scratch_config(read_config(run_dir), of_run=Path(run_dir).name))


def baseline_of(run_dir: Path) -> str | None:
    """The name of the pretrained run that `run_dir` is the from-scratch baseline of, else None.
    (Runs made before parent_run existed kept it in extra["baseline_of"].)"""
    config = read_config_record(run_dir).get("config", {})
    if config.get("weights") != "none":
        return None
    return config.get("parent_run") or config.get("extra", {}).get("baseline_of")


def find_baseline(run_dir: Path, workspace: Path | None = None) -> Path | None:
    """The newest from-scratch run made for `run_dir`, if any."""
    from ..ops.runs import list_runs

    for candidate in list_runs(workspace):
        if baseline_of(candidate) == Path(run_dir).name:
            return candidate
    return None


def transfer_verdict(pretrained: dict, scratch: dict) -> dict:
    """What the pretrained weights bought, in plain words, from the two runs' metrics.

    A gap counts only beyond about two standard errors of the difference of the two validation
    accuracies (and at least 2 points): on 40 validation images one image is 2.5 points.
    """
    gain = round(pretrained["val_acc"] - scratch["val_acc"], 6)
    margin = max(0.02, 1.96 * _difference_se(pretrained, scratch))
    if gain > margin:
        text = (f"Transfer helped: the pretrained backbone reached {pretrained['val_acc']:.0%} against "
                f"{scratch['val_acc']:.0%} from scratch on the same data and budget (+{gain * 100:.0f} "
                f"percentage points).")
        kind = "positive"
    elif gain < -margin:
        text = (f"Negative transfer: training from scratch did better ({scratch['val_acc']:.0%} against "
                f"{pretrained['val_acc']:.0%}). The pretrained features may fit these images poorly; "
                "try unfreezing more layers, another backbone, or more data.")
        kind = "negative"
    else:
        text = (f"No clear difference: {pretrained['val_acc']:.0%} pretrained against {scratch['val_acc']:.0%} "
                f"from scratch, within what chance moves on this many validation images (±{margin * 100:.0f} "
                f"percentage points). "
                "More validation images would tell them apart.")
        kind = "neutral"
    return {"gain": gain, "margin": margin, "kind": kind, "text": text}


def _difference_se(a: dict, b: dict) -> float:
    """Standard error of the difference of two accuracies measured on n_val images each."""
    def variance(m):
        p, n = m["val_acc"], m.get("n_val") or 0
        return p * (1 - p) / n if n else 0.0

    return (variance(a) + variance(b)) ** 0.5


# ---- multi-task: did sharing one backbone help each task? --------------------------------------------------

def separate_model_configs(config: RunConfig, of_run: str, tasks: list[str]) -> list[RunConfig]:
    """One run per task on the same images, backbone, plan and budget: what the tasks would reach alone."""
    return [config.replace(name=f"{config.name or config.backbone}: {task} alone", parent_run=of_run,
                           only_task=task, separate_of=of_run)
            for task in tasks]


def start_separate_models(jobs, run_dir: Path) -> list[Path]:
    """Queue one single-task twin per task of a finished multi-task run; returns their run folders."""
    from ..ops.storage import read_json

    tasks = [t["name"] for t in (read_json(RunFolder(run_dir).labels) or {}).get("tasks", [])]
    return [jobs.submit(c) for c in separate_model_configs(read_config(run_dir), Path(run_dir).name, tasks)]


def find_separate_models(run_dir: Path, workspace: Path | None = None) -> dict[str, Path]:
    """{task: the newest single-task twin made for the multi-task run `run_dir`}."""
    from ..ops.runs import list_runs

    found = {}
    for candidate in list_runs(workspace):
        config = read_config_record(candidate).get("config", {})
        lineage = {**(config.get("extra") or {}), **config}  # configs written before the fields kept them in "extra"
        if lineage.get("separate_of") == Path(run_dir).name and lineage.get("only_task") not in found:
            found[lineage["only_task"]] = candidate
    return found


def sharing_verdict(shared: dict, alone: dict[str, dict]) -> dict:
    """Per task, the shared model's score against the task's own model, and in words whether sharing one
    backbone helped (positive transfer), hurt (negative transfer) or made no clear difference.

    `shared` is the multi-task run's metrics.json, `alone` {task: that task's own run's metrics.json}. A gap
    counts beyond about two standard errors of the difference (at least 2 points), as for the scratch baseline.
    """
    rows = []
    for task, metrics in shared.get("tasks", {}).items():
        own = (alone.get(task) or {}).get("tasks", {}).get(task)
        if own is None or metrics.get("score") is None or own.get("score") is None:
            continue
        a, b = metrics["score"], own["score"]
        n = min(metrics.get("n") or 0, own.get("n") or 0)
        se = ((a * (1 - a) + b * (1 - b)) / n) ** 0.5 if n else 0.0
        margin = max(0.02, 1.96 * se)
        gain = a - b
        kind = "positive" if gain > margin else "negative" if gain < -margin else "neutral"
        rows.append({"task": task, "score_name": metrics.get("score_name", "score"), "shared": a, "alone": b,
                     "gain": gain, "margin": margin, "kind": kind})
    walls = [m.get("wall_s") for m in alone.values()]
    wall = {"shared_s": shared.get("wall_s"), "alone_s": sum(walls) if walls and None not in walls else None}
    kinds = {row["kind"] for row in rows}
    if not rows:
        text, kind = "The separate models have not finished yet.", "pending"
    elif "negative" in kinds:
        hurt = ", ".join(f"{r['task']} ({r['shared']:.0%} shared against {r['alone']:.0%} alone)"
                         for r in rows if r["kind"] == "negative")
        text, kind = (f"Negative transfer: sharing one backbone hurt {hurt}. Give that task its own model, or "
                      "lower the other tasks' loss weights (--task-weights)."), "negative"
    elif "positive" in kinds:
        helped = ", ".join(f"{r['task']} ({r['shared']:.0%} against {r['alone']:.0%})" for r in rows
                           if r["kind"] == "positive")
        text, kind = f"Sharing helped: {helped} did better trained together than alone.", "positive"
    else:
        text, kind = ("No clear difference per task between one shared model and a model per task, within what "
                      "chance moves on this many validation images; the shared model needs one backbone, not "
                      f"{len(rows)}."), "neutral"
    if wall["alone_s"] and wall["shared_s"]:
        text += f" Training time: {wall['shared_s']:.0f} s shared, {wall['alone_s']:.0f} s for the separate models."
    return {"rows": rows, "kind": kind, "text": text, "wall": wall}
