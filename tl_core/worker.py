"""One run's life, whoever starts it: the command line, the local job queue, a Ray task, or torchrun.

    claim (the run's lock and a device slot) → status "running" → the run's task kind (tl_core.kinds)
    → the kind's plan (the Auto plan) → the kind's fit, told the standard listeners (event log, STOP,
    a distributed strategy's agreement, the caller's own) → the kind's checks of the finished run
    → status "done" | "cancelled" | "failed" (with the reason)

Nothing here knows a kind by name. A Strategy (tl_core.fit.strategy) says where the fit runs; under
torchrun (tl_core.distributed) only the main process claims the run and writes its folder: it settles
the plan and hands the settled config to the other processes, which fit alike into a scratch folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from . import kinds
from .fit.callbacks import CancelFit, Emitter, EventLog, StopFile
from .fit.tasks import Task
from .ops.jobs import claim_run
from .ops.runs import RunFolder, read_config, read_events, record_facts, write_metrics, write_status
from .use.run_facts import measured_wall
from .ops.storage import StorageFull


def run(run_dir: str | Path, extra_callbacks: list | None = None, on_wait=None, task: Task | None = None,
        strategy=None) -> dict:
    """Train the prepared run in `run_dir` and keep status.json true whatever happens; its metrics ({} when
    cancelled).

    The run is claimed first, with a device slot of its workspace (jobs.claim_run): one worker per run,
    never more runs than slots, whoever calls. While every slot is busy it waits (`on_wait(message)` says
    so); jobs.RunBusy when another worker already trains this run. `extra_callbacks` listen last; `task`
    replaces the kind's own training objective (tl_core.fit.tasks); `strategy` is None for one device.
    """
    run_dir = Path(run_dir)
    if strategy is not None and not strategy.is_main:
        return _follow(run_dir, strategy, extra_callbacks, task)
    with claim_run(run_dir, on_wait=on_wait) as claim:
        if strategy is not None:
            strategy.broadcast(not claim.cancelled)
        if claim.cancelled:  # stopped while it waited for a slot
            return {}
        return _live(run_dir, extra_callbacks, task, strategy)


def _live(run_dir: Path, extra_callbacks: list | None, task: Task | None, strategy) -> dict:
    """The claimed run, in the main process."""
    log, settled = None, strategy is None
    try:
        started = time.time()
        write_status(run_dir, state="running", pid=os.getpid(), started=started, error=None)
        log = EventLog.for_run(run_dir)
        stop = RunFolder(run_dir).stop
        # A strategy of several processes checks STOP itself, so that every process stops at the same batch.
        own = strategy.callbacks(stop) if strategy is not None else []
        emit = Emitter([*own, log, *([] if own else [StopFile(run_dir)])], extra_callbacks)
        config = read_config(run_dir)
        kind = kinds.kind_of(config)
        if strategy is not None and strategy.facts():
            record_facts(run_dir, **strategy.facts())
        config = _settle(kind, config, run_dir, lambda message, **progress: log(
            "notice", {"phase": "plan", "message": message, **progress}, None))
        plan_done = time.time()
        if not settled:
            settled = strategy.broadcast(config) is not None
        metrics = kind.call("fit", config, run_dir, emit, strategy, **({"task": task} if task else {}))
        if kind.after_fit:
            kind.call("after_fit", config, run_dir)
        metrics = _whole_wall(run_dir, metrics, started, plan_done)
    except CancelFit as stop:
        if not settled:  # the other processes wait for the settled config: none, they end too
            strategy.broadcast(None)
        if not getattr(stop, "announced", False):  # stopped before the fit began (while the plan measured)
            log("cancelled", {"reason": str(stop)}, None)
        write_status(run_dir, state="cancelled", ended=time.time())
        return {}
    except Exception as error:  # the worker's last word: status.json says what went wrong
        if not settled:
            strategy.broadcast(None)
        message = (str(error) if isinstance(error, (ValueError, StorageFull))
                   else f"{type(error).__name__}: {error}")
        try:
            if log is not None:
                log("error", {"message": message, "traceback": traceback.format_exc(limit=8)}, None)
            write_status(run_dir, state="failed", ended=time.time(), error=message)
        except OSError as unrecorded:  # a full disk: the caller still gets the reason, with this note
            error.add_note(f"(the failure could not be recorded in {run_dir}: {unrecorded})")
        raise
    write_status(run_dir, state="done", ended=time.time())
    return metrics


def _whole_wall(run_dir: Path, metrics: dict, started: float, plan_done: float) -> dict:
    """metrics.json's wall_s made the whole run's, from its claim to now (the Auto plan's measuring and the
    feature pass included), with its parts; the fit's own time stays as fit_wall_s."""
    if not isinstance(metrics, dict) or "wall_s" not in metrics:
        return metrics
    measured = measured_wall(read_events(run_dir), started, plan_done, time.time())
    metrics = {**metrics, "fit_wall_s": metrics["wall_s"], **measured}
    write_metrics(run_dir, metrics)
    return metrics


def _settle(kind: kinds.TaskKind, config, run_dir: Path, notice):
    """The config the fit trains: the kind's plan (the Auto plan's measurement) where it has one."""
    return kind.call("plan", config, run_dir, notice) if kind.plan else config


def _follow(run_dir: Path, strategy, extra_callbacks: list | None, task: Task | None) -> dict:
    """A process other than the main one: the same fit, on the main process's settled config, its files
    written to a scratch folder thrown away after."""
    if not strategy.broadcast(None):  # the run was cancelled while the main process waited for a slot
        return {}
    config = strategy.broadcast(None)
    if config is None:  # the main process ended the run before its fit began (cancelled, or failed)
        return {}
    kind = kinds.kind_of(config)
    scratch = Path(tempfile.mkdtemp(prefix=f"tl_rank{strategy.rank}_"))
    try:
        return kind.call("fit", config, scratch, Emitter(strategy.callbacks(None), extra_callbacks), strategy,
                         **({"task": task} if task else {}))
    except CancelFit:
        return {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
