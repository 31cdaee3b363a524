"""The facts of a finished run, each worked out in one place, so that every screen, the command line,
the model card and metrics.json say the same: its name, accuracy with its 95 % interval, how many images
trained and validated it and how (a hold-out or k-fold cross-validation), what learnt (parameters, and
whether the backbone itself was fine-tuned), and how long it took, with the parts of that time.

Pages read this instead of metrics.json's raw fields; tl_core.use.model_card and the CLI do too."""
from __future__ import annotations

import numbers
from pathlib import Path

from ..fit.metrics import accuracy_interval
from ..ops import runs
from ..ops.filecache import file_stamp, keyed_on
from ..ops.words import format_seconds, plural, validation_protocol

# The parts of a run's wall time, in the order they happen, with the words a screen shows for each.
WALL_PARTS = {"measuring": "the Auto plan measuring", "loading": "loading images and backbone",
              "features": "features (one pass through the frozen backbone)", "fitting": "fitting and saving"}

# What a freeze plan is called in a run's default name.
_PLAN_NAMES = {"auto": "Auto", "head": "Head only", "all": "All layers"}


def _number(value):
    return value if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def percent(value) -> str:
    """An accuracy as every screen writes it: "98.6%" ("—" when unknown)."""
    return "—" if _number(value) is None else f"{value:.1%}"


def interval_text(interval) -> str:
    """A 95 % interval as every screen writes it: "92.5%–99.8%" ("—" when unknown)."""
    if not interval:
        return "—"
    return f"{interval[0]:.1%}–{interval[1]:.1%}"


def dataset_name(dataset_dir) -> str | None:
    """The name the user gave a dataset (its folder name when its manifest cannot be read); None without one."""
    if not dataset_dir:
        return None
    from ..data.datasets import dataset_name as name_in_manifest

    try:
        return name_in_manifest(dataset_dir)
    except Exception:  # deleted or damaged since the run: its folder's name still says something
        return Path(str(dataset_dir)).name


def plan_name(freeze) -> str:
    """A freeze plan in a run's name: Auto, Head only, All layers, top-2, or the groups."""
    return _PLAN_NAMES.get(str(freeze), str(freeze or "?"))


def default_name(run_dir) -> str:
    """The readable name a run gets until its owner renames it: "Auto · materials · 98.6 %"."""
    record = runs.read_config_record(Path(run_dir))
    config = record.get("config", {}) if isinstance(record.get("config"), dict) else {}
    metrics = runs.read_metrics(Path(run_dir)) or {}
    parts = [plan_name(config.get("freeze")), dataset_name(config.get("dataset_dir")) or "?"]
    if _number(metrics.get("val_acc")) is not None:
        parts.append(percent(metrics["val_acc"]))
    return " · ".join(parts)


# Every select box of runs names them all at each rerun; the name is read from these three files only.
def _name_stamp(run_dir) -> tuple:
    folder = runs.RunFolder(run_dir)
    return file_stamp(folder.name), file_stamp(folder.config), file_stamp(folder.metrics)


@keyed_on(_name_stamp)
def run_name(run_dir) -> str:
    """The run's name: the one its owner gave (renamed on the Results page), else the default."""
    given = runs.read_run_name(Path(run_dir))
    if given:
        return given
    record = runs.read_config_record(Path(run_dir))
    config = record.get("config", {}) if isinstance(record.get("config"), dict) else {}
    return str(config.get("name") or "") or default_name(run_dir)


def learnt(metrics: dict) -> dict:
    """What the kept model learnt: its parameter count, whether the backbone itself learnt, in words.

    A fine-tune run whose probe was kept learnt only the head: its plan's trainable count is not what the
    model holds, so every screen shows the kept weights' count (metrics["kept"])."""
    kept = metrics.get("kept") if isinstance(metrics.get("kept"), dict) else {}
    params = _number(kept.get("trainable_params"))
    if params is None:
        params = _number(metrics.get("trainable_params"))
    plan = kept.get("plan")
    if kept:
        fine_tuned = kept.get("phase") != "probe" and plan != "head"
    else:
        fine_tuned = None  # a kind that keeps no such record: unknown, and said so
    if fine_tuned is None:
        words = "—"
    elif fine_tuned:
        words = f"the head and the backbone's layer groups of plan {plan} (fine-tuned)"
    else:
        words = "only the new head (the backbone stayed as pretrained)"
    return {"learnt_params": int(params) if params is not None else None,
            "total_params": _number(metrics.get("total_params")), "fine_tuned": fine_tuned,
            "learnt_words": words}


def validation(metrics: dict) -> dict:
    """How the scores were measured: kind (cv, holdout, separate, none), words, and a sentence on the images."""
    if not metrics:
        return {"validation": None, "validation_words": "—", "images_words": "—"}
    kind = runs.validation_kind(metrics)
    n_train, n_val = _number(metrics.get("n_train")), _number(metrics.get("n_val"))
    how = validation_protocol(metrics) or "—"
    if kind == "cv":
        images = (f"{plural(n_val, 'image')}, each scored by a head fitted without it ({how}); "
                  f"the head kept was then fitted on all {plural(n_train, 'image')}")
    elif kind == "separate":
        images = f"{plural(n_train, 'training image')}; {plural(n_val, 'image')} of a separate validation set"
    elif kind == "none":
        images = f"{plural(n_train, 'training image')}; not validated"
    else:
        images = f"{plural(n_train, 'training image')}; {plural(n_val, 'validation image')} ({how})"
    return {"validation": kind, "validation_words": how, "images_words": images}


def wall(metrics: dict) -> dict:
    """How long the run took, from its claim to its end, and the parts of it (WALL_PARTS) when measured."""
    total = _number(metrics.get("wall_s"))
    parts = metrics.get("wall_parts") if isinstance(metrics.get("wall_parts"), dict) else {}
    listed = [f"{WALL_PARTS.get(name, name)} {format_seconds(seconds)}" for name, seconds in parts.items()
              if _number(seconds) is not None]
    return {"wall_s": total, "wall_words": format_seconds(total),
            "wall_parts": dict(parts), "wall_parts_words": "; ".join(listed)}


def facts_interval(metrics: dict) -> tuple[float, float] | None:
    """The 95 % Wilson interval of metrics' validation accuracy on its n_val images; None without them."""
    accuracy, n_val = _number(metrics.get("val_acc")), _number(metrics.get("n_val"))
    return accuracy_interval(accuracy, int(n_val)) if accuracy is not None and n_val else None


def facts(run_dir) -> dict:
    """Every fact above of one run, from its folder (metrics.json, config, name); {} parts read "—"."""
    run_dir = Path(run_dir)
    metrics = runs.read_metrics(run_dir) or {}
    record = runs.read_config_record(run_dir)
    config = record.get("config", {}) if isinstance(record.get("config"), dict) else {}
    accuracy, n_val = _number(metrics.get("val_acc")), _number(metrics.get("n_val"))
    interval = facts_interval(metrics)
    return {
        "run_id": run_dir.name, "name": run_name(run_dir),
        "dataset": dataset_name(config.get("dataset_dir")),
        "accuracy": accuracy, "accuracy_words": percent(accuracy),
        "interval": interval, "interval_words": interval_text(interval),
        "n_train": _number(metrics.get("n_train")), "n_val": n_val,
        **validation(metrics), **learnt(metrics), **wall(metrics),
    }


def measured_wall(events: list[dict], started: float, settled: float, ended: float) -> dict:
    """The run's wall time from its claim (`started`) to its end, and its parts (WALL_PARTS), from the
    times the worker took (`settled`: the Auto plan done) and the fit's events. The parts add up to the whole."""
    fit_start = next((e["t"] for e in events if e.get("event") == "fit_start" and _number(e.get("t"))), None)
    probe_start = next((e["t"] for e in events if e.get("event") == "phase_start" and e.get("phase") == "probe"
                        and _number(e.get("t"))), None)
    feature_ends = [e["t"] for e in events if e.get("event") == "batch_end" and e.get("phase") == "features"
                    and _number(e.get("t"))]
    # A run without an Auto plan settles in milliseconds: no "measuring" part to list, its instant is loading's
    parts, mark = ({"measuring": settled - started}, settled) if settled - started >= 0.5 else ({}, started)
    if fit_start is not None and mark <= fit_start <= ended:
        parts["loading"], mark = fit_start - mark, fit_start
    if probe_start is not None and feature_ends and mark <= probe_start <= feature_ends[-1] <= ended:
        parts["loading"] = parts.get("loading", 0.0) + probe_start - mark
        parts["features"], mark = feature_ends[-1] - probe_start, feature_ends[-1]
    parts["fitting"] = max(0.0, ended - mark)
    return {"wall_s": round(ended - started, 2), "wall_parts": {k: round(v, 2) for k, v in parts.items()}}


@keyed_on(lambda run_dir: runs.run_stamp(Path(run_dir)))  # a table of runs asks on every rerun
def summary(run_dir) -> dict:
    """A row for a table of runs (tl_core.ops.words.summarize) with the facts above in place of raw fields:
    the readable name, the dataset's own name (not its id), what the kept model learnt, the whole wall."""
    from ..ops.words import summarize

    row, known = summarize(Path(run_dir)), facts(run_dir)
    return {**row, "name": known["name"], "dataset": known["dataset"] or row["dataset"],
            "learnt_params": known["learnt_params"], "wall_s": known["wall_s"]}
