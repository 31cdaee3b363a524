"""The job queue: each run trains in its own worker process, one at a time, oldest queued first.

The run folders are the queue: a run is waiting while its status says "queued", so a restarted
server finds its queue again. A worker that dies without saying so is marked failed with the
reason, never left "running".
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import RunConfig
from .runs import (FINAL_STATES, create_run, list_runs, pid_alive, read_status, request_stop, write_status)
from .storage import workspace_root


class JobManager:
    """Starts workers for queued runs, at most `slots` at once (one per GPU); `tick` does one round."""

    def __init__(self, workspace: Path | None = None, slots: int = 1, poll_s: float = 0.5,
                 background: bool = True):
        self.workspace = Path(workspace) if workspace else workspace_root()
        self.slots = slots
        self.poll_s = poll_s
        self.workers: dict[Path, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        if background:
            threading.Thread(target=self._loop, name="tl-jobs", daemon=True).start()

    # ---- what the UI calls ---------------------------------------------------------------------
    def submit(self, config: RunConfig) -> Path:
        """Create a queued run for `config`; it starts as soon as a slot is free."""
        run_dir = create_run(config, self.workspace)
        self.tick()
        return run_dir

    def cancel(self, run_dir: Path) -> None:
        request_stop(run_dir)

    def queue(self, statuses: dict[Path, dict] | None = None) -> list[Path]:
        """Queued runs in the order they will start."""
        statuses = statuses if statuses is not None else self._statuses()
        queued = [p for p, status in statuses.items() if status.get("state") == "queued"]
        return sorted(queued, key=lambda p: (statuses[p].get("queued", 0), p.name))

    def _statuses(self) -> dict[Path, dict]:
        """Every run's status, each file read once (a tick runs every poll_s)."""
        return {p: read_status(p) for p in list_runs(self.workspace)}

    def queue_position(self, run_dir: Path) -> int | None:
        """1 for the next run to start, 2 after it...; None when the run is not waiting."""
        queue = [p.resolve() for p in self.queue()]
        run_dir = Path(run_dir).resolve()
        return queue.index(run_dir) + 1 if run_dir in queue else None

    def running(self) -> list[Path]:
        with self._lock:
            return [p for p, proc in self.workers.items() if proc.poll() is None]

    def wait(self, run_dir: Path, timeout: float = 600) -> dict:
        """Block until the run reaches a final state (for tests and the command line)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.tick()
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
                        os.killpg(proc.pid, signal.SIGKILL)

    # ---- the scheduler ------------------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            self._reap_finished()
            statuses = self._statuses()
            self._fail_orphans(statuses)
            for run_dir in self.queue(statuses):
                if len(self.running()) >= self.slots:
                    break
                self._start(run_dir)

    def _loop(self) -> None:
        while not self._closed.wait(self.poll_s):
            try:
                self.tick()
            except Exception as error:  # keep scheduling; a broken run folder must not stop the queue
                print(f"tl_core.jobs: {error}", file=sys.stderr)

    def _start(self, run_dir: Path) -> None:
        if Path(run_dir, "STOP").exists():
            write_status(run_dir, state="cancelled", ended=time.time())
            return
        log = open(Path(run_dir) / "worker.log", "ab")
        env = dict(os.environ, TL_STUDIO_HOME=str(self.workspace), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "tl_core", "train", str(run_dir)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=_project_root())
        log.close()
        write_status(run_dir, state="running", pid=proc.pid, started=time.time())
        self.workers[Path(run_dir)] = proc

    def _reap_finished(self) -> None:
        for run_dir, proc in list(self.workers.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.workers[run_dir]
            if read_status(run_dir).get("state") not in FINAL_STATES:
                write_status(run_dir, state="failed", ended=time.time(), error=_death_reason(run_dir, code))

    def _fail_orphans(self, statuses: dict[Path, dict]) -> None:
        """A "running" run whose worker is gone (killed, or the server restarted) has failed."""
        ours = set(self.workers)
        for run_dir, status in statuses.items():
            if status.get("state") == "running" and run_dir not in ours and not pid_alive(status.get("pid")):
                write_status(run_dir, state="failed", ended=time.time(),
                             error=f"the worker process (pid {status.get('pid')}) is gone without finishing: "
                                   "it was killed or the machine restarted")


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
    tail = _log_tail(Path(run_dir) / "worker.log")
    return f"{why}; last output: {tail}" if tail else why


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
