"""The run folder: the contract between the engine, its worker process and the UI.

<workspace>/runs/<run_id>/ holds config.json, status.json, events.jsonl, metrics.json,
predictions.csv (and val_probs.npy, every class's probability), model.safetensors, labels.json,
preprocess.json, worker.lock, worker.log and, to cancel, STOP. This module names them all, and reads
and writes them (a fit's outputs, the Auto plan, the event log, the worker's log) and the OS locks
that say who trains a run; nothing else names a run file (the exported bundle's program excepted).
Every whole-file write is atomic, so a reader never sees half a file; every reader survives a file
that was damaged anyway (an empty, cut or garbage file is reported, never raised).
A run is being trained exactly while a process holds the OS lock on its worker.lock.
The readers a page calls on every rerun (the record, metrics, events, damage) keep what they read while the
files are unchanged (tl_core.ops.filecache): a rerun stats the files instead of parsing them again.
"""
from __future__ import annotations

import csv
import fcntl
import io
import numbers
import os
import platform
import secrets
import shutil
import time
from pathlib import Path

from ..config import RunConfig
from .filecache import copy_records, file_stamp, folder_stamp, keyed_on
from .storage import (DamagedFile, atomic_file, atomic_write_bytes, atomic_write_json, parse_json, read_json,
                      workspace_root)

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
DAMAGED = "damaged"  # the state shown for a run whose status.json or config.json cannot be read


class RunFolder:
    """The files of one run folder, by what they hold: the only place their names are written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json", doc="the RunConfig and versions, written once")
    facts = property(lambda self: self.path / "facts.json", doc="what the worker learnt: device, classes, sizes")
    status = property(lambda self: self.path / "status.json", doc="queued | running | done | failed | cancelled")
    events = property(lambda self: self.path / "events.jsonl", doc="one JSON event a line, flushed at once")
    metrics = property(lambda self: self.path / "metrics.json", doc="the final metrics, with the weights kept")
    predictions = property(lambda self: self.path / "predictions.csv", doc="one row per validation image")
    val_probs = property(lambda self: self.path / "val_probs.npy",
                         doc="validation class probabilities: a row per predictions.csv row, a column per class "
                             "(out-of-fold under cross-validation)")
    weights = property(lambda self: self.path / "model.safetensors", doc="the kept weights")
    labels = property(lambda self: self.path / "labels.json", doc="the classes, in the model's output order")
    preprocess = property(lambda self: self.path / "preprocess.json", doc="architecture and input geometry")
    lock = property(lambda self: self.path / "worker.lock", doc="held by the one process training the run")
    stop = property(lambda self: self.path / "STOP", doc="made to cancel; the worker stops within a batch")
    plan = property(lambda self: self.path / "plan.json", doc="the Auto plan's measurement and the plan kept")
    candidates = property(lambda self: self.path / "candidates", doc="the Auto plan's candidate runs, one folder each")
    owner = property(lambda self: self.path / "owner.json", doc="who started the run, on a classroom server")
    name = property(lambda self: self.path / "name.json", doc="the name its owner gave the run after it was made")
    detections = property(lambda self: self.path / "detections.json",
                          doc="a detection run's validation pictures: true and predicted boxes (tl_core.detect)")
    export_root = property(lambda self: self.path / "export", doc="exported bundles, one folder per format")
    log = property(lambda self: self.path / "worker.log", doc="the worker process's own output (stdout, stderr)")
    threshold = property(lambda self: self.path / "threshold.json",
                         doc="an anomaly run's decision threshold: value, how it was set, in words")
    scores = property(lambda self: self.path / "scores.csv",
                      doc="an anomaly run's score of every image it saw: good (held out by leave-one-out) and labelled")
    anomaly_maps = property(lambda self: self.path / "anomaly_maps.npy",
                            doc="an anomaly run's heat maps of its labelled images, a row per scores.csv test row")
    heldout = property(lambda self: self.path / "heldout",
                       doc="tests on held-out sets the model never saw: result.json and the pictures it got wrong")
    novelty = property(lambda self: self.path / "novelty.npz",
                       doc="the training images' pooled features and the 'none of these' threshold set on them")


LOCK_FILE = RunFolder(".").lock.name
_METRIC_NUMBERS = ("val_acc", "val_balanced_acc", "val_loss", "macro_f1", "wall_s", "images_per_s", "best_epoch", "epochs_run")
_EVENT_NUMBERS = {"fit_start": ("epochs",), "epoch_end": ("epoch", "train_loss", "val_loss", "train_acc", "val_acc"),
                  "batch_end": ("epoch",)}


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


def create_run(config: RunConfig, workspace: Path | None = None, run_dir: Path | None = None,
               owner: str | None = None) -> Path:
    """Make a run folder holding config.json and a queued status (and owner.json, on a classroom server)."""
    run_dir = Path(run_dir) if run_dir else runs_root(workspace) / new_run_id(config)
    if RunFolder(run_dir).config.exists():
        raise FileExistsError(f"{run_dir}: already holds a run")
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LOCK_FILE).touch()  # made now: a lock file takes no space later, when the disk may be full
        write_status(run_dir, state="queued", queued=time.time())
        if owner is not None:  # before config.json: a listed run never lacks its owner
            atomic_write_json(RunFolder(run_dir).owner, {"owner": owner})
        # config.json last: list_runs shows a folder only once it holds one, so a half-made run never shows
        atomic_write_json(RunFolder(run_dir).config, {"config": config.to_dict(), "versions": package_versions()})
    except BaseException:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def record_facts(run_dir: Path, **facts) -> None:
    """Add facts learnt while running (device used, classes, sizes) to facts.json; config.json stays as written."""
    known = _read_object(RunFolder(run_dir).facts)[0] or {}
    atomic_write_json(RunFolder(run_dir).facts, {**known, **facts})


@keyed_on(lambda run_dir: (file_stamp(RunFolder(run_dir).config), file_stamp(RunFolder(run_dir).facts)))
def read_config_record(run_dir: Path) -> dict:
    """The run's record: config.json ({"config", "versions"}) with the facts learnt while running;
    {} when config.json is missing or damaged (damage() says which)."""
    record = _read_config(Path(run_dir))[0]
    if not record:
        return {}
    return {**(_read_object(RunFolder(run_dir).facts)[0] or {}), **record}


def write_run_name(run_dir: Path, name: str) -> None:
    """Rename a run (name.json; config.json stays as written). An empty name goes back to the default."""
    name = " ".join(str(name).split())[:120]  # one line, bounded: it is shown in tables and select boxes
    if name:
        atomic_write_json(RunFolder(run_dir).name, {"name": name})
    else:
        RunFolder(run_dir).name.unlink(missing_ok=True)


def read_run_name(run_dir: Path) -> str | None:
    """The name given with write_run_name; None when the run was never renamed (or name.json is damaged)."""
    record = _read_object(RunFolder(run_dir).name)[0] or {}
    name = record.get("name")
    return name if isinstance(name, str) and name.strip() else None


# Every list of a student's runs asks it of every run in the class at each rerun: read again only when it changes.
@keyed_on(lambda run_dir: file_stamp(RunFolder(run_dir).owner), copy_result=False)
def read_owner(run_dir: Path) -> str | None:
    """Who started the run on a classroom server; None for a laptop's run (or an unreadable owner.json)."""
    record = _read_object(RunFolder(run_dir).owner)[0] or {}
    owner = record.get("owner")
    return owner if isinstance(owner, str) else None


def read_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig of a run folder (config.json also holds the package versions, set aside here)."""
    data = read_json(RunFolder(run_dir).config)
    return RunConfig.from_dict(data.get("config", data))


def _read_config(run_dir: Path) -> tuple[dict | None, str | None]:
    record, problem = _read_object(RunFolder(run_dir).config)
    if record is not None and not isinstance(record.get("config", {}), dict):
        return None, "config.json: 'config' is not a table of settings"
    return record, problem


@keyed_on(lambda run_dir: file_stamp(RunFolder(run_dir).status))  # written atomically: a new write, a new inode
def read_status(run_dir: Path) -> dict:
    """status.json; {"state": "damaged", "error": "status.json: why"} when it cannot be read."""
    status, problem = _read_status(Path(run_dir))
    if problem:
        return {"state": DAMAGED, "error": problem}
    return status if status is not None else {"state": "unknown"}


def _read_status(run_dir: Path) -> tuple[dict | None, str | None]:
    status, problem = _read_object(RunFolder(run_dir).status)
    if status is not None and status.get("state") not in STATES:
        return None, f"status.json: unknown state {str(status.get('state'))[:40]!r}"
    return status, problem


def write_status(run_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json (a damaged one is replaced); never recreates a deleted run folder."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (deleted?)")
    status = _read_status(Path(run_dir))[0] or {}
    status.update(fields)
    atomic_write_json(RunFolder(run_dir).status, status)
    return status


def request_stop(run_dir: Path) -> None:
    """Ask the worker to stop; it does within one batch. A queued run nobody has claimed is cancelled at once."""
    RunFolder(run_dir).stop.touch()
    if read_status(run_dir).get("state") == "queued" and not lock_held(Path(run_dir) / LOCK_FILE):
        write_status(run_dir, state="cancelled", ended=time.time(), error=None)


def stop_requested(run_dir: Path) -> bool:
    return RunFolder(run_dir).stop.exists()


class EventReader:
    """Reads the new complete lines of events.jsonl since the last call (a partial last line waits).

    A line that is not a JSON object with an "event" name (or holds text where its kind has numbers) is
    skipped and counted in `bad_lines`, so one damaged line never hides the others.
    """

    def __init__(self, run_dir: Path):
        self.path = RunFolder(run_dir).events
        self.offset = 0
        self.lines = 0
        self.bad_lines: list[tuple[int, str]] = []  # (line number, why)

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except (FileNotFoundError, IsADirectoryError):
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        events = []
        for line in chunk[:end].splitlines():
            self.lines += 1
            if not line.strip():
                continue
            event, why = _parse_event(line)
            if why:
                self.bad_lines.append((self.lines, why))
            else:
                events.append(event)
        return events

    def unfinished_tail(self) -> bool:
        """True when the file ends in a partial line (normal while the worker writes; damage once it is done)."""
        try:
            return self.path.stat().st_size > self.offset
        except OSError:
            return False


def _parse_event(line: bytes) -> tuple[dict | None, str | None]:
    try:
        event = parse_json(line)
    except DamagedFile as damage:
        return None, damage.reason
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None, "not an event (a JSON object with an \"event\" name)"
    for key in _EVENT_NUMBERS.get(event["event"], ()):
        if key in event and event[key] is not None and not _is_number(event[key]):
            return None, f"{event['event']} whose {key!r} is not a number"
    return event, None


@keyed_on(lambda run_dir: file_stamp(RunFolder(run_dir).events), copy_result=copy_records)
def read_events(run_dir: Path) -> list[dict]:
    """The complete lines of events.jsonl (a partial last line waits); damaged lines are skipped."""
    return EventReader(run_dir).read_new()


@keyed_on(lambda run_dir: file_stamp(RunFolder(run_dir).metrics))
def read_metrics(run_dir: Path) -> dict | None:
    """metrics.json; None when it is missing or damaged (damage() says which)."""
    return _read_metrics(Path(run_dir))[0]


def _read_metrics(run_dir: Path) -> tuple[dict | None, str | None]:
    metrics, problem = _read_object(RunFolder(run_dir).metrics)
    if metrics is None:
        return None, problem
    why = _metrics_problem(metrics)
    return (None, f"metrics.json: {why}") if why else (metrics, None)


def _metrics_problem(metrics: dict) -> str | None:
    for key in _METRIC_NUMBERS:
        if key in metrics and metrics[key] is not None and not _is_number(metrics[key]):
            return f"{key!r} is not a number"
    classes = metrics.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        return "'classes' is not a list of names"
    confusion = metrics.get("confusion")
    if confusion is not None and not (
            isinstance(confusion, list) and len(confusion) == len(classes)
            and all(isinstance(row, list) and len(row) == len(classes) and all(map(_is_number, row))
                    for row in confusion)):
        return "'confusion' is not a square table of counts, one row per class"
    if not isinstance(metrics.get("kept", {}), dict):
        return "'kept' is not a record of the weights kept"
    per_class = metrics.get("per_class", {})
    if not isinstance(per_class, dict) or not all(isinstance(v, dict) for v in per_class.values()):
        return "'per_class' is not a table of scores per class"
    return None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _read_object(path: Path) -> tuple[dict | None, str | None]:
    """(the JSON object in `path` or None, "name: why" when it exists but cannot be used)."""
    try:
        value = read_json(path)
    except DamagedFile as damage:
        return None, f"{path.name}: {damage.reason}"
    except OSError as error:
        return None, f"{path.name}: could not be read ({error.strerror or error})"
    if value is not None and not isinstance(value, dict):
        return None, f"{path.name}: not a JSON object"
    return value, None


def run_stamp(run_dir: Path) -> tuple:
    """Changes whenever a file of the run changes: a cache key. The worker's lock is not probed (a probe is a
    brief flock that a claiming worker could meet): a worker takes it before it writes "running" and drops it
    after its final status, and the scheduler writes "failed" for one that died holding it."""
    return folder_stamp(run_dir)


@keyed_on(run_stamp)
def damage(run_dir: Path) -> list[str]:
    """What is wrong with the run's files, one "file: reason" each; [] for a healthy run."""
    run_dir = Path(run_dir)
    problems = [problem for problem in (_read_config(run_dir)[1], _read_status(run_dir)[1],
                                        _read_metrics(run_dir)[1], _read_object(RunFolder(run_dir).facts)[1])
                if problem]
    reader = EventReader(run_dir)
    reader.read_new()
    for number, why in reader.bad_lines[:3]:
        problems.append(f"events.jsonl: line {number} skipped, {why}")
    if len(reader.bad_lines) > 3:
        problems.append(f"events.jsonl: {len(reader.bad_lines) - 3} more lines skipped")
    if reader.unfinished_tail() and not lock_held(run_dir / LOCK_FILE):
        problems.append("events.jsonl: the last line is cut short")
    return problems


def list_runs(workspace: Path | None = None) -> list[Path]:
    """Run folders, newest first."""
    root = runs_root(workspace)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if not p.name.startswith(".") and RunFolder(p).config.exists()]
    return sorted(runs, key=lambda p: p.name, reverse=True)


def delete_run(run_dir: Path) -> None:
    """Remove a run folder; refused while a worker holds it (stop the run first)."""
    run_dir = Path(run_dir)
    if run_dir.resolve().parent != runs_root(run_dir.parent.parent).resolve() or not RunFolder(run_dir).config.exists():
        raise ValueError(f"{run_dir}: not a run folder of a workspace; nothing deleted")
    if lock_held(run_dir / LOCK_FILE):
        raise ValueError(f"{run_dir.name}: a worker is training it; stop it first, then delete it")
    shutil.rmtree(run_dir)


# ---------------------------------------------------------------- OS file locks

def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path` (created if missing), or None when another holds it.

    flock locks belong to the open file description: they are released when every descriptor of it is
    closed, which the kernel does when a process dies however it dies. No pid is ever guessed.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the lock


def lock_held(path: Path) -> bool:
    """Whether some process holds `path`'s lock now (a missing lock file is not held)."""
    if not Path(path).exists():
        return False
    try:
        fd = try_lock(Path(path))
    except FileNotFoundError:
        return False
    if fd is None:
        return True
    unlock(fd)
    return False


# ---------------------------------------------------------------- claiming a run

class RunBusy(RuntimeError):
    """Another worker holds the run: nothing to do here."""


_CLAIM_RETRY_S = 0.5  # a lock probe of the scheduler holds a lock for microseconds; retrying this long rides it out


def claim_lock(run_dir: Path) -> int:
    """An open descriptor holding the run's lock, for a run that has not ended: RunBusy when another worker
    holds it, ValueError when the run already ended, FileNotFoundError when it is not a run folder."""
    if not RunFolder(run_dir).config.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json); prepare the run first")
    deadline = time.monotonic() + _CLAIM_RETRY_S
    while (fd := try_lock(run_dir / LOCK_FILE)) is None:
        if time.monotonic() > deadline:
            pid = read_status(run_dir).get("pid")
            raise RunBusy(f"{run_dir.name}: another worker{f' (pid {pid})' if pid else ''} is already "
                          "training this run; nothing to do")
        time.sleep(0.05)
    state = read_status(run_dir).get("state")
    if state in FINAL_STATES:
        unlock(fd)
        raise ValueError(f"{run_dir}: this run already ended ({state}); start a new run to train again")
    return fd


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (for messages only: a pid may belong to another program by now)."""
    if not pid or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------- how a run validated
def validation_kind(record: dict) -> str:
    """"cv", "holdout", "separate" or "none" (one image a class): how a run validated, from its metrics or
    fit_start event. (Runs made before validation_method existed said it only in words.)"""
    method = record.get("validation_method")
    if isinstance(method, dict) and method.get("kind") in ("cv", "holdout", "separate", "none"):
        return method["kind"]
    words = str(record.get("validation") or "")
    return "cv" if "cross-validation" in words else "separate" if "separate" in words else "holdout"


# ---------------------------------------------------------------- what a fit writes

def write_model(run_dir: Path, model, labels: dict, preprocess: dict) -> None:
    """The kept weights (safetensors), labels.json and preprocess.json: everything a predictor needs."""
    from safetensors.torch import save_model

    folder = RunFolder(run_dir)
    tmp = folder.weights.with_name(f".{folder.weights.name}.tmp")
    save_model(model, str(tmp))
    os.replace(tmp, folder.weights)
    atomic_write_json(folder.labels, labels)
    atomic_write_json(folder.preprocess, preprocess)


def write_predictions(run_dir: Path, header: list[str], rows) -> None:
    """predictions.csv: the header, then one row per validation image (and task)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(RunFolder(run_dir).predictions, buffer.getvalue().encode())


def write_val_probs(run_dir: Path, probs) -> None:
    """val_probs.npy: every class's probability of each predictions.csv row (a numpy array)."""
    import numpy as np

    with atomic_file(RunFolder(run_dir).val_probs) as f:
        np.save(f, probs)


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_json(RunFolder(run_dir).metrics, metrics)


def write_plan(run_dir: Path, measured: dict) -> None:
    """plan.json: the Auto plan's measurement and the plan kept."""
    atomic_write_json(RunFolder(run_dir).plan, measured)


def read_plan(run_dir: Path) -> dict | None:
    """plan.json; None when the run has none (not an Auto run) or it cannot be read."""
    try:
        return read_json(RunFolder(run_dir).plan)
    except (OSError, ValueError):
        return None


def open_event_log(run_dir: Path):
    """events.jsonl opened to append (a text file; the writer flushes each line)."""
    return open(RunFolder(run_dir).events, "a", encoding="utf-8")


def open_worker_log(run_dir: Path):
    """worker.log opened to append (binary): a worker process's stdout and stderr go there."""
    return open(RunFolder(run_dir).log, "ab")


def worker_log_tail(run_dir: Path, lines: int = 3) -> str:
    """The last lines of worker.log, joined by " | " ("" when there is none)."""
    try:
        text = RunFolder(run_dir).log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


_HELDOUT_RESULT = "result.json"
_HELDOUT_MISTAKES = "mistakes"


def heldout_mistakes_folder(run_dir: Path) -> Path:
    """Where a held-out test keeps copies of the pictures it got wrong (made empty by write_heldout)."""
    return RunFolder(run_dir).heldout / _HELDOUT_MISTAKES


def write_heldout(run_dir: Path, result: dict, mistakes: list[tuple[str, bytes]]) -> None:
    """A held-out test's result, replacing the last one: result.json and each mistaken picture by its name."""
    folder = heldout_mistakes_folder(run_dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for file_name, data in mistakes:
        atomic_write_bytes(folder / file_name, data)
    atomic_write_json(RunFolder(run_dir).heldout / _HELDOUT_RESULT, result)


def read_heldout(run_dir: Path) -> dict | None:
    """The last held-out test of a run; None when there was none or its record cannot be read."""
    return _read_object(RunFolder(run_dir).heldout / _HELDOUT_RESULT)[0]
