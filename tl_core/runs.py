"""The run folder: the contract between the engine, its worker process and the UI.

<workspace>/runs/<run_id>/ holds config.json, status.json, events.jsonl, metrics.json,
predictions.csv, model.safetensors, labels.json, preprocess.json and, to cancel, STOP.
Every whole-file write is atomic, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import time
from pathlib import Path

from .config import RunConfig
from .storage import atomic_write_json, read_json, workspace_root

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")


def runs_root(workspace: Path | None = None) -> Path:
    return (workspace or workspace_root()) / "runs"


def new_run_id(config: RunConfig) -> str:
    """Sortable by creation time, readable, unique: 20261122-101500-efficientnet_lite0-3fa2."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.backbone.replace('/', '_')}-{secrets.token_hex(2)}"


def package_versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "pillow", "numpy", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def create_run(config: RunConfig, workspace: Path | None = None, run_dir: Path | None = None) -> Path:
    """Make a run folder holding config.json and a queued status; return its path."""
    run_dir = Path(run_dir) if run_dir else runs_root(workspace) / new_run_id(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "config.json").exists():
        raise FileExistsError(f"{run_dir}: already holds a run")
    atomic_write_json(run_dir / "config.json", {"config": config.to_dict(), "versions": package_versions()})
    write_status(run_dir, state="queued", queued=time.time())
    return run_dir


def update_config_record(run_dir: Path, **facts) -> None:
    """Add facts learnt while running (device used, classes, sizes) beside the config."""
    record = read_json(Path(run_dir) / "config.json", {})
    record.update(facts)
    atomic_write_json(Path(run_dir) / "config.json", record)


def read_config_record(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / "config.json", {})


def read_status(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / "status.json", {"state": "unknown"})


def write_status(run_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json."""
    status = read_json(Path(run_dir) / "status.json", {})
    status.update(fields)
    atomic_write_json(Path(run_dir) / "status.json", status)
    return status


def request_stop(run_dir: Path) -> None:
    """Ask the worker to stop; it does within one batch. A queued run is cancelled at once."""
    Path(run_dir, "STOP").touch()
    if read_status(run_dir).get("state") == "queued":
        write_status(run_dir, state="cancelled", ended=time.time(), error=None)


def stop_requested(run_dir: Path) -> bool:
    return Path(run_dir, "STOP").exists()


class EventReader:
    """Reads the new complete lines of events.jsonl since the last call (a partial last line waits)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "events.jsonl"
        self.offset = 0

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def read_events(run_dir: Path) -> list[dict]:
    return EventReader(run_dir).read_new()


def read_metrics(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / "metrics.json")


def summarize(run_dir: Path) -> dict:
    """One row for a table of runs: id, state, key settings and scores."""
    record = read_config_record(run_dir)
    config = record.get("config", {})
    status = read_status(run_dir)
    metrics = read_metrics(run_dir) or {}
    return {
        "run_id": Path(run_dir).name,
        "run_dir": str(run_dir),
        "name": config.get("name", ""),
        "state": status.get("state", "unknown"),
        "backbone": config.get("backbone"),
        "weights": config.get("weights"),
        "freeze": config.get("freeze"),
        "epochs": config.get("epochs"),
        "augment": config.get("augment"),
        "dataset": Path(config.get("dataset_dir", "")).name,
        "device": record.get("device"),
        "val_acc": metrics.get("val_acc"),
        "val_loss": metrics.get("val_loss"),
        "wall_s": metrics.get("wall_s"),
        "queued": status.get("queued"),
        "error": status.get("error"),
    }


def list_runs(workspace: Path | None = None) -> list[Path]:
    """Run folders, newest first."""
    root = runs_root(workspace)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "config.json").exists()]
    return sorted(runs, key=lambda p: p.name, reverse=True)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child has exited; only its parent's wait() removes it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True
