"""Runs in words for a person: the progress line of a live run, durations, how a run validated, and one
row per run for a table of runs. The run folder (tl_core.ops.runs) holds the facts; this module says them."""
from __future__ import annotations

import numbers
from pathlib import Path

from .filecache import keyed_on
from .runs import damage, read_config_record, read_metrics, read_status, run_stamp, validation_kind


@keyed_on(run_stamp)  # a table of runs summarizes every run on every rerun: only a changed run is read again
def summarize(run_dir: Path) -> dict:
    """One row for a table of runs: id, state, key settings and scores; `damaged` names broken files."""
    record = read_config_record(run_dir)
    config = record.get("config", {}) if isinstance(record.get("config"), dict) else {}
    status = read_status(run_dir)
    metrics = read_metrics(run_dir) or {}
    problems = damage(run_dir)
    return {
        "run_id": Path(run_dir).name,
        "run_dir": str(run_dir),
        "name": str(config.get("name", "")),
        "state": status.get("state", "unknown"),
        "backbone": config.get("backbone"),
        "weights": config.get("weights"),
        "freeze": config.get("freeze"),
        "epochs": config.get("epochs"),
        "augment": config.get("augment"),
        "dataset": Path(str(config.get("dataset_dir", ""))).name,
        "device": record.get("device"),
        "val_acc": metrics.get("val_acc"),
        "val_loss": metrics.get("val_loss"),
        "validation": validation_protocol(metrics),
        **target_summary(metrics),
        "wall_s": metrics.get("wall_s"),
        "queued": status.get("queued"),
        "error": status.get("error"),
        "damaged": "; ".join(problems) or None,
    }


def target_summary(metrics: dict) -> dict:
    """A run's accuracy on labelled target images (adapted when it adapted) and the method; None without them."""
    target = metrics.get("target") if isinstance(metrics.get("target"), dict) else {}
    measured = target.get("adapted") or target.get("source_only") or {}
    accuracy = measured.get("target_acc") if isinstance(measured, dict) else None
    return {"target_acc": accuracy if isinstance(accuracy, numbers.Real) else None,
            "adapt": target.get("method") if target else None}


def validation_protocol(metrics: dict) -> str | None:
    """How a finished run's scores were measured, in a few words; None before it finished."""
    if not metrics or metrics.get("val_acc") is None:
        return None
    method = metrics.get("validation_method") if isinstance(metrics.get("validation_method"), dict) else {}
    kind = validation_kind(metrics)
    if kind == "cv":
        return "leave-one-out" if method.get("leave_one_out") else f"{method.get('folds', '?')}-fold cross-validation"
    if kind == "holdout":
        fraction = method.get("fraction")
        return f"{fraction:.0%} held out" if isinstance(fraction, (int, float)) else "held out"
    return {"separate": "a separate set", "none": "not validated"}.get(kind, str(metrics.get("validation")))


def plural(count, noun: str, plural_form: str | None = None) -> str:
    """A count with its noun agreeing: "1 image", "2 images", "1 class", "3 classes"; "—" when unknown."""
    if not isinstance(count, (int, float)) or isinstance(count, bool):
        return f"— {plural_form or _plural(noun)}"
    shown = f"{count:,}" if float(count).is_integer() else f"{count:g}"
    return f"{shown} {noun if count == 1 else (plural_form or _plural(noun))}"


def _plural(noun: str) -> str:
    """The English plural of the nouns the app counts (images, classes, mistakes, epochs...)."""
    last = noun.split()[-1]
    if last.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def format_seconds(seconds: float | None, short: bool = False) -> str:
    """A duration in words a person reads at a glance: 42 s, 3 min 05 s, 1 h 02 min; `short` (for a metric
    tile, which cuts long values): 42 s, 3.1 min, 1.0 h."""
    if seconds is None:
        return "–"
    if 0 < seconds < 1:  # a fast epoch is not "0 s"
        return "< 1 s"
    if short and seconds >= 60:
        return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _number(value, default=None):
    """`value` when it is a number (an event line may come from a damaged file), else `default`."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def progress(events: list[dict], status: dict) -> tuple[float, str]:
    """(fraction done, text with epoch, ETA and speed) of a run, from its events so far.

    The epochs counted are every epoch the run will train: when layers learn, the head's probe epochs on
    frozen features come before the epochs the user set, and the text says so. Before the first epoch of a
    phase, the one-off pass through the frozen layers is named as such, not shown as "epoch 0".
    """
    fit_start = next((e for e in reversed(events) if e["event"] == "fit_start"), None)
    if fit_start is None:
        planning = [e for e in events if e["event"] == "notice" and e.get("phase") == "plan"]
        if planning and status.get("state") == "running":  # the Auto plan measures its candidates first
            said = planning[-1]
            fraction = min(max(_number(said.get("fraction"), 0.0), 0.0), 1.0)
            eta = _number(said.get("eta_s"))
            return fraction, str(said.get("message", "")) + (f" · about {format_seconds(eta)} left" if eta else "")
        return 0.0, "Starting: loading the images and the backbone…" if status.get("state") == "running" else ""
    total = max(_number(fit_start.get("epochs"), 1), 1)
    probe_epochs = _number(fit_start.get("probe_epochs"))
    epoch_ends = [e for e in events if e["event"] == "epoch_end" and _number(e.get("epoch")) is not None]
    done = epoch_ends[-1]["epoch"] if epoch_ends else 0
    last = events[-1]
    if last["event"] == "batch_end" and last.get("phase") == "features":
        shown, of = _number(last.get("done"), 0), _number(last.get("total"), 1)
        return (min(shown / max(of, 1), 1.0),
                f"Passing every image through the frozen backbone once: {shown} of {of}")
    phase_start = next((e for e in reversed(events) if e["event"] == "phase_start"), None)
    since_phase = events[events.index(phase_start) + 1:] if phase_start is not None else []
    if phase_start is not None and not any(e["event"] in ("epoch_end", "batch_end") for e in since_phase):
        if phase_start.get("phase") == "probe":
            return 0.0, "Computing features: every image goes through the frozen backbone once…"
        if phase_start.get("phase") == "finetune":
            return (done / total, f"Epoch {done} of {total}: running the frozen layers once over every image "
                                  f"before fine-tuning…")
    fraction = done / total
    if last["event"] == "batch_end" and _number(last.get("batches")) and _number(last.get("epoch")) is not None \
            and _number(last.get("batch")) is not None:
        fraction = (last["epoch"] - 1 + last["batch"] / last["batches"]) / total
    fraction = max(0.0, min(fraction, 1.0))
    # The phase running now sets the pace: the head's epochs on cached features take milliseconds, a
    # fine-tune's epochs on images take seconds, so one phase's epochs never time the other's.
    current = (phase_start.get("phase") if phase_start is not None
               else epoch_ends[-1].get("phase") if epoch_ends else None)
    this_phase = [e for e in epoch_ends if e.get("phase") == current and _number(e.get("seconds")) is not None]
    left_epochs = total - fraction * total
    eta = ""
    if this_phase:
        eta = f" · about {format_seconds(left_epochs * sum(e['seconds'] for e in this_phase) / len(this_phase))} left"
    elif last["event"] == "batch_end" and last.get("phase") == current and phase_start is not None \
            and _number(last.get("batch")) and _number(last.get("batches")) and _number(last.get("t")) \
            and _number(phase_start.get("t")):  # the phase's first epoch: timed from its batches so far
        epoch_s = (last["t"] - phase_start["t"]) / (last["batch"] / last["batches"])
        eta = f" · about {format_seconds(left_epochs * epoch_s)} left"
    if eta and current == "probe" and probe_epochs and probe_epochs < total:
        eta = " · time left known once fine-tuning starts"  # the probe's pace says nothing of fine-tuning's
    in_phase = last["event"] in ("batch_end", "epoch_end") and last.get("phase") == current
    speed = _number(last.get("images_per_s")) if in_phase else None
    if speed is None and this_phase:
        speed = _number(this_phase[-1].get("images_per_s"))
    speed_text = f" · {speed:,.0f} images/s" if speed else ""
    of_what = ""
    if probe_epochs and 0 < probe_epochs < total:  # a fine-tune follows the probe: say what the total holds
        of_what = f" (the {total - probe_epochs} you set, after {probe_epochs} fitting the head)"
    return fraction, f"Epoch {done} of {total}{of_what}{eta}{speed_text}"
