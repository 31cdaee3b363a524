"""The teacher's table of a classroom: a row per run with its student, its name, its dataset's name (not its id),
where it stands now (queue position, progress of a live run, accuracy of a finished one), in words with no empty
value shown as Python's None."""
from __future__ import annotations

from pathlib import Path

from ..data.datasets import dataset_name as name_in_manifest
from ..ops import runs, words
from . import run_facts

MISSING = "—"  # as every other table writes what is not known (pages/8_Runs.py, run_facts)


def class_row(run_dir: str | Path, position: int | None = None, wait_s: float | None = None) -> dict:
    """One run's row: every value a number in [0, 1] (progress) or a text a person reads; `position` and `wait_s`
    come from the job queue for a queued run."""
    run_dir = Path(run_dir)
    summary = words.summarize(run_dir)
    status = runs.read_status(run_dir)
    state = summary["state"]
    fraction, now = run_progress(run_dir, status)
    accuracy = summary.get("val_acc")
    return {
        "student": runs.read_owner(run_dir) or MISSING,
        "run": run_facts.run_name(run_dir),  # the name a person gave, else the readable default
        "state": state,
        "progress": fraction,
        "now": now,
        "queue": f"{position}" if position else MISSING,
        "starts in": words.format_seconds(wait_s) if wait_s else MISSING,
        "accuracy": f"{accuracy:.1%}" if isinstance(accuracy, (int, float)) else MISSING,
        "dataset": dataset_name(run_dir),
        "backbone": summary.get("backbone") or MISSING,
        "run_dir": str(run_dir),
    }


def run_progress(run_dir: Path, status: dict) -> tuple[float, str]:
    """(fraction done, where it stands in words): the live progress line of a running run (tl_core.ops.words),
    the last word of a finished, failed or stopped one."""
    state = status.get("state")
    if state == "running":
        return words.progress(runs.read_events(run_dir), status)
    if state == "queued":
        return 0.0, "waiting for its turn"
    if state == "done":
        return 1.0, "finished"
    if state == "failed":
        return 0.0, f"failed: {status.get('error') or 'no reason given'}"
    if state == "cancelled":
        return 0.0, "stopped"
    return 0.0, str(state or "unknown")


def dataset_name(run_dir: Path) -> str:
    """The name its student gave the run's dataset; the folder's id when the dataset has been deleted since."""
    folder = str((runs.read_config_record(run_dir).get("config") or {}).get("dataset_dir") or "")
    if not folder:
        return MISSING
    try:
        return name_in_manifest(folder)
    except (ValueError, OSError):
        return f"{Path(folder).name} (deleted)"
