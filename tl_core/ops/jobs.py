"""The job queue: each run trains in its own worker process, at most `slots` at once, oldest queued first.

Exactly one worker per run, and never more workers than slots, by construction, whoever starts them
(the app's scheduler, `python -m tl_core train`, `tl_core.worker.run` from Python), with OS file locks:
- a run is claimed by an exclusive flock on its `worker.lock`: a second claimant gets nothing and exits;
- a device slot is one of `<workspace>/locks/slot-<i>.lock`; training needs one, so a run started from
  the command line waits for a free slot instead of starting beside a run of the app;
- the kernel drops a dead process's locks, so "is it still training?" is "is the lock held?", never
  a guess from a pid that may belong to another program by now. A restarted server sees survivors.
The scheduler takes both locks itself before it starts a worker and hands them down (the child
inherits the open descriptors), so a worker that has not yet started is never counted as absent.
The run folders are the queue: a run is waiting while its status says "queued".
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from .runs import (FINAL_STATES, LOCK_FILE, RunBusy, claim_lock, create_run, list_runs, lock_held,
                   open_worker_log, read_metrics, read_owner, read_status, request_stop, stop_requested, try_lock,
                   unlock, worker_log_tail, write_status)
from .storage import workspace_root

__all__ = ["RunBusy", "claim_run", "JobManager", "BUSY_EXIT"]  # RunBusy: claiming's refusal, raised by runs.claim_lock

BUSY_EXIT = 75  # a worker's exit code when another worker already holds its run (EX_TEMPFAIL)
_RUN_FD_ENV, _SLOT_FD_ENV = "TL_STUDIO_RUN_LOCK_FD", "TL_STUDIO_SLOT_LOCK_FD"


# What a training worker must never see: the classroom's codes (a run's code could read its environment).
SECRET_ENV = ("TL_STUDIO_ACCESS_CODE", "TL_STUDIO_TEACHER_CODE")


def worker_environment() -> dict[str, str]:
    """This process's environment without the classroom's codes: what a worker process starts with."""
    return {name: value for name, value in os.environ.items() if name not in SECRET_ENV}


def default_slots() -> int:
    """Runs that may train at once in a workspace: $TL_STUDIO_SLOTS, else one per GPU (1 without a GPU)."""
    try:
        return max(1, int(os.environ["TL_STUDIO_SLOTS"]))
    except (KeyError, ValueError):
        return max(1, len(gpu_ids()))


def gpu_count() -> int:
    """GPUs the driver shows this process (0 without CUDA); asks without starting CUDA here."""
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def gpu_ids() -> list[str]:
    """The GPUs this server hands to its workers: $CUDA_VISIBLE_DEVICES's list when set, else 0 … n-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    return [str(index) for index in range(gpu_count())]


def worker_gpu(slot: int, gpus: list[str]) -> str | None:
    """The GPU a worker in `slot` sees as its only one: slot i gets GPU i (wrapping round when there are
    more slots than GPUs); None without a GPU."""
    return gpus[slot % len(gpus)] if gpus else None


def fair_order(queued: list[tuple[Path, str | None, float]], training: dict[str | None, int] | None = None) -> list[Path]:
    """Queued runs (path, owner, queued time) in the order they should start: round-robin between owners,
    first come first served within one owner.

    An owner's k-th waiting run goes in round k, counting the runs they already have training, so one
    student's ten runs never hold back another student's first; within a round, the earlier queued first.
    """
    training = training or {}
    waiting: dict[str | None, int] = {}
    keyed = []
    for path, owner, queued_at in sorted(queued, key=lambda q: (q[2], q[0].name)):
        rank = training.get(owner, 0) + waiting.get(owner, 0)
        waiting[owner] = waiting.get(owner, 0) + 1
        keyed.append(((rank, queued_at, path.name), path))
    return [path for _, path in sorted(keyed)]


def slot_lock_paths(workspace: Path, slots: int) -> list[Path]:
    return [Path(workspace) / "locks" / f"slot-{index}.lock" for index in range(slots)]


def training_runs(workspace: Path | None = None) -> list[Path]:
    """Runs whose worker is alive now (their lock is held), newest first."""
    return [p for p in list_runs(workspace) if read_status(p).get("state") == "running" and lock_held(p / LOCK_FILE)]


# ---------------------------------------------------------------- claiming a run (every way in)

@dataclass
class Claim:
    """A run held by this process: its lock, and a device slot unless it was cancelled while waiting."""

    run_dir: Path
    run_fd: int | None
    slot_fd: int | None = None
    slot: int | None = None
    cancelled: bool = False

    def release(self) -> None:
        unlock(self.slot_fd)
        unlock(self.run_fd)
        self.slot_fd = self.run_fd = None


_held: dict[str, Claim] = {}  # this process's claims, so a nested claim of the same run is a no-op


@contextmanager
def claim_run(run_dir: str | Path, *, slots: int | None = None, on_wait: Callable[[str], None] | None = None,
              poll_s: float = 1.0):
    """Hold `run_dir` and a device slot of its workspace for the block; wait for a slot when all are busy.

    Raises RunBusy when another worker holds the run, ValueError when the run already ended. A STOP
    while waiting ends the wait with the run cancelled (`claim.cancelled`). `on_wait(message)` is
    called once when the wait begins, to say why nothing happens yet.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held:
        yield _held[key]
        return
    claim = _inherited_claim(run_dir) or Claim(run_dir, claim_lock(run_dir))
    _held[key] = claim
    try:
        if claim.slot_fd is None:
            _wait_for_slot(claim, _workspace_of(run_dir), slots or default_slots(), on_wait, poll_s)
        yield claim
    finally:
        del _held[key]
        claim.release()


def _inherited_claim(run_dir: Path) -> Claim | None:
    """The locks the scheduler took for this worker and handed down as open descriptors, if they are this run's."""
    run_fd, slot_fd = os.environ.pop(_RUN_FD_ENV, None), os.environ.pop(_SLOT_FD_ENV, None)
    if run_fd is None or slot_fd is None:
        return None
    try:
        run_fd, slot_fd = int(run_fd), int(slot_fd)
        mine, expected = os.fstat(run_fd), os.stat(run_dir / LOCK_FILE)
    except (ValueError, OSError):
        return None
    if (mine.st_dev, mine.st_ino) != (expected.st_dev, expected.st_ino):
        return None
    for fd in (run_fd, slot_fd):
        os.set_inheritable(fd, False)  # the worker's own children must not keep its locks alive
    return Claim(run_dir, run_fd, slot_fd, slot=int(os.environ.pop("TL_STUDIO_SLOT", "-1")))


def _wait_for_slot(claim: Claim, workspace: Path, slots: int, on_wait, poll_s: float) -> None:
    said = False
    while True:
        for index, path in enumerate(slot_lock_paths(workspace, slots)):
            path.parent.mkdir(parents=True, exist_ok=True)
            if (fd := try_lock(path)) is not None:
                claim.slot_fd, claim.slot = fd, index
                return
        if stop_requested(claim.run_dir):
            write_status(claim.run_dir, state="cancelled", ended=time.time(), error=None)
            claim.cancelled = True
            return
        if not said and on_wait is not None:
            busy = [p.name for p in training_runs(workspace)]
            on_wait(f"waiting for a free slot: {len(busy) or slots} of {slots} busy in {workspace}"
                    + (f" ({', '.join(busy)})" if busy else "") + "; this run starts when one ends")
            said = True
        time.sleep(poll_s)


def _workspace_of(run_dir: Path) -> Path:
    """The workspace whose slots a run uses: the one it lives in, else $TL_STUDIO_HOME."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent.parent if run_dir.parent.name == "runs" else workspace_root()


# ---------------------------------------------------------------- the scheduler

class JobManager:
    """Starts workers for queued runs while a device slot is free; `tick` does one round."""

    def __init__(self, workspace: Path | None = None, slots: int | None = None, poll_s: float = 0.5,
                 background: bool = True, worker_command: list[str] | None = None):
        self.workspace = Path(workspace) if workspace else workspace_root()
        self.slots = slots or default_slots()
        self.gpus = gpu_ids()
        self.poll_s = poll_s
        self.worker_command = list(worker_command or [sys.executable, "-m", "tl_core", "train"])
        self.workers: dict[Path, subprocess.Popen] = {}
        # Runs that failed but whose status could not be saved (a full disk): never started again by this server.
        self.unsaved_failures: dict[Path, str] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        if background:
            threading.Thread(target=self._loop, name="tl-jobs", daemon=True).start()

    # ---- what the UI calls ---------------------------------------------------------------------
    def submit(self, config: RunConfig, owner: str | None = None) -> Path:
        """Create a queued run for `config` (started by `owner`, on a classroom server); it starts when a slot is free."""
        run_dir = create_run(config, self.workspace, owner=owner)
        self._tick_quietly()
        return run_dir

    def cancel(self, run_dir: Path) -> None:
        request_stop(run_dir)

    def queue(self, statuses: dict[Path, dict] | None = None) -> list[Path]:
        """Queued runs in the order they will start."""
        statuses = statuses if statuses is not None else self._statuses()
        queued = [(p, read_owner(p), _number(status.get("queued"))) for p, status in statuses.items()
                  if status.get("state") == "queued" and p not in self.unsaved_failures]
        training: dict[str | None, int] = {}
        for p, status in statuses.items():
            if status.get("state") == "running":
                training[read_owner(p)] = training.get(read_owner(p), 0) + 1
        return fair_order(queued, training)

    def _statuses(self) -> dict[Path, dict]:
        """Every run's status, each file read once (a tick runs every poll_s)."""
        return {p: read_status(p) for p in list_runs(self.workspace)}

    def queue_position(self, run_dir: Path) -> int | None:
        """1 for the next run to start, 2 after it...; None when the run is not waiting."""
        queue = [p.resolve() for p in self.queue()]
        run_dir = Path(run_dir).resolve()
        return queue.index(run_dir) + 1 if run_dir in queue else None

    def expected_wait(self, run_dir: Path) -> float | None:
        """About how many seconds until a queued run starts: its round of the slots times the typical length of
        a recent run here; None when it is not waiting or no run has finished yet to judge by."""
        position = self.queue_position(run_dir)
        durations = sorted(_number((read_metrics(p) or {}).get("wall_s"), None) or 0.0
                           for p in list_runs(self.workspace)[:50] if read_status(p).get("state") == "done")
        durations = [d for d in durations if d > 0]
        if position is None or not durations:
            return None
        typical = durations[len(durations) // 2]
        return math.ceil(position / self.slots) * typical

    def running(self) -> list[Path]:
        """Runs training now in this workspace, whoever started them."""
        return training_runs(self.workspace)

    def wait(self, run_dir: Path, timeout: float = 600) -> dict:
        """Block until the run reaches a final state (for tests and the command line)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.tick()
            if Path(run_dir) in self.unsaved_failures:
                return {"state": "failed", "error": self.unsaved_failures[Path(run_dir)]}
            status = read_status(run_dir)
            if status.get("state") in FINAL_STATES:
                return status
            time.sleep(self.poll_s)
        raise TimeoutError(f"{run_dir}: still {read_status(run_dir).get('state')} after {timeout:.0f} s")

    def close(self, kill: bool = False) -> None:
        self._closed.set()
        if kill:
            with self._lock:
                for proc in self.workers.values():
                    if proc.poll() is None:
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass

    # ---- the scheduler ------------------------------------------------------------------------
    def tick(self) -> None:
        """Reap finished workers, fail dead ones, start queued runs while a slot is free."""
        with self._lock:
            self._reap_finished()
            self._save_failures()
            statuses = self._statuses()
            self._fail_orphans(statuses)
            for run_dir in self.queue(statuses):
                try:
                    outcome = self._start(run_dir)
                except Exception as error:  # one broken run folder must not stop the queue
                    print(f"tl_core.ops.jobs: {run_dir.name}: {error}", file=sys.stderr)
                    continue
                if outcome == "no slot":
                    break

    def _tick_quietly(self) -> None:
        try:
            self.tick()
        except Exception as error:  # the background loop tries again
            print(f"tl_core.ops.jobs: {error}", file=sys.stderr)

    def _loop(self) -> None:
        while not self._closed.wait(self.poll_s):
            self._tick_quietly()

    def _start(self, run_dir: Path) -> str:
        """"started", "skipped" (taken, cancelled or failed to start) or "no slot"."""
        if stop_requested(run_dir):
            write_status(run_dir, state="cancelled", ended=time.time())
            return "skipped"
        run_fd = try_lock(run_dir / LOCK_FILE)
        if run_fd is None:
            return "skipped"  # claimed by another worker: a command-line run waiting for a slot, another server
        slot_fd = log = None
        try:
            if read_status(run_dir).get("state") != "queued":
                return "skipped"  # started and ended elsewhere since the statuses were read
            slot = self._free_slot()
            if slot is None:
                return "no slot"
            index, slot_fd = slot
            try:  # written while this process holds the run's lock, before any process exists: a status
                # that cannot be written (a full disk) starts nothing, and no worker's own status is overwritten
                write_status(run_dir, state="running", pid=None, started=time.time(), error=None)
            except OSError as error:
                self._mark_failed(run_dir, f"the run could not start: {error}")
                return "skipped"
            try:
                log = open_worker_log(run_dir)
                env = dict(worker_environment(), TL_STUDIO_HOME=str(self.workspace), PYTHONUNBUFFERED="1",
                           **{_RUN_FD_ENV: str(run_fd), _SLOT_FD_ENV: str(slot_fd), "TL_STUDIO_SLOT": str(index)})
                if (gpu := worker_gpu(index, self.gpus)) is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpu  # one worker per GPU: each sees only its slot's
                proc = subprocess.Popen([*self.worker_command, str(run_dir)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                        cwd=_project_root(), pass_fds=(run_fd, slot_fd))
            except OSError as error:
                self._mark_failed(run_dir, f"the worker process could not start: {error}")
                return "skipped"
        finally:
            if log is not None:
                log.close()
            unlock(slot_fd)  # the worker holds its own copies of both locks now
            unlock(run_fd)
        self.workers[run_dir] = proc  # the worker writes its pid itself, once it runs
        return "started"

    def _free_slot(self) -> tuple[int, int] | None:
        for index, path in enumerate(slot_lock_paths(self.workspace, self.slots)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = try_lock(path)
            if fd is not None:
                return index, fd
        return None

    def _reap_finished(self) -> None:
        for run_dir, proc in list(self.workers.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.workers[run_dir]
            if code != BUSY_EXIT and read_status(run_dir).get("state") not in FINAL_STATES:
                self._mark_failed(run_dir, _death_reason(run_dir, code))

    def _fail_orphans(self, statuses: dict[Path, dict]) -> None:
        """A "running" run whose lock nobody holds has lost its worker (killed, or the machine restarted)."""
        for run_dir, status in statuses.items():
            if status.get("state") != "running" or run_dir in self.workers or run_dir in self.unsaved_failures:
                continue
            if lock_held(run_dir / LOCK_FILE):
                continue  # alive: started by another server, the command line, or before this server restarted
            status = read_status(run_dir)  # read again: it may have ended between the two reads
            if status.get("state") == "running":
                pid = status.get("pid")
                self._mark_failed(run_dir, f"the worker process{f' (pid {pid})' if pid else ''} is gone without "
                                           "finishing: it was killed or the machine restarted")

    def _save_failures(self) -> None:
        """Write down the failures a full disk kept in memory, once there is room again."""
        for run_dir, reason in list(self.unsaved_failures.items()):
            try:
                write_status(run_dir, state="failed", ended=time.time(), error=reason)
            except FileNotFoundError:  # the run was deleted meanwhile
                pass
            except OSError:
                continue
            del self.unsaved_failures[run_dir]

    def _mark_failed(self, run_dir: Path, reason: str) -> None:
        try:
            write_status(run_dir, state="failed", ended=time.time(), error=reason)
        except OSError as error:
            self.unsaved_failures[Path(run_dir)] = reason
            print(f"tl_core.ops.jobs: {Path(run_dir).name} failed ({reason}); its status could not be saved: {error}",
                  file=sys.stderr)


def _number(value, default: float | None = 0.0) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _death_reason(run_dir: Path, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"the worker process was killed by {name}"
        if name == "SIGKILL":
            why += " (often: out of memory)"
    else:
        why = f"the worker process exited with code {code} before finishing"
    tail = worker_log_tail(run_dir)
    return f"{why}; last output: {tail}" if tail else why


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])
