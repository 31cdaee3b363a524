"""One run's life, whatever started it: claim, status, the fit, and the worker's last word on failure."""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from . import adapt, multitask
from .plan import auto_plan
from .fit.callbacks import (EVENTS, BestCheckpoint, CancelFit, DivergenceGuard, EarlyStopping, EventLog, NanGuard,
                            StopFile)
from .ops.runs import RunFolder, read_config, write_status
from .fit.tasks import Task
from .fit.loop import DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE, Fit


def run(run_dir: str | Path, extra_callbacks: list | None = None, on_wait=None,
        task: Task | None = None) -> dict:
    """Train the prepared run in `run_dir` and keep status.json true whatever happens.

    The run is claimed first, with a device slot of its workspace (jobs.claim_run): one worker per run,
    never more runs than slots, whoever calls. While every slot is busy it waits (`on_wait(message)` says
    so); jobs.RunBusy when another worker already trains this run.
    """
    from .ops.jobs import claim_run  # imported here: only this function deals with claiming
    from .ops.storage import StorageFull

    run_dir = Path(run_dir)
    with claim_run(run_dir, on_wait=on_wait) as claim:
        if claim.cancelled:  # stopped while it waited for a slot
            return {}
        log = fit = None
        try:
            write_status(run_dir, state="running", pid=os.getpid(), started=time.time(), error=None)
            log = EventLog(RunFolder(run_dir).events)
            config = read_config(run_dir)
            if config.task != "classify":  # another task kind fits itself (tl_core.kinds)
                from . import kinds

                listeners = [log, StopFile(run_dir), *(extra_callbacks or [])]
                metrics = kinds.get(config.task).call("fit", config, run_dir, _emitter(listeners), None)
                write_status(run_dir, state="done", ended=time.time())
                return metrics
            fit_class = Fit
            if multitask.has_tasks(config):  # a labels table: a head per task (tl_core.multitask)
                from .multitask.fit import MultiTaskFit

                fit_class = MultiTaskFit
                if config.adapt != "none" and config.target_dir:
                    raise ValueError("domain adaptation of a multi-task run is not supported yet: choose adapt none")
                if config.freeze == "auto":
                    config = config.replace(freeze="head")
                    log("notice", {"phase": "plan", "message": "several tasks: feature extraction, a head per task "
                                   "(choose top-N or all to fine-tune the shared layers for every task at once)"}, None)
            if config.freeze == "auto":  # measure the candidate plans first; the run trains the one kept
                config = auto_plan.resolve(config, run_dir, lambda message: log(
                    "notice", {"phase": "plan", "message": message}, None))
            adaptation = adapt.plan_for(config)  # a target domain's callbacks (after BestCheckpoint) and task
            fit = fit_class(config, run_dir, [log, StopFile(run_dir),
                                        DivergenceGuard(DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE),
                                        NanGuard(), BestCheckpoint(), EarlyStopping(config.early_stopping),
                                        *adaptation.callbacks, *(extra_callbacks or [])], task or adaptation.task)
            metrics = fit.run()
        except CancelFit as stop:
            if fit is None:  # stopped while the Auto plan measured its candidates
                log("cancelled", {"reason": str(stop)}, None)
            else:
                fit.emit("cancelled", reason=str(stop))
                fit.save()
            write_status(run_dir, state="cancelled", ended=time.time())
            return {}
        except Exception as error:  # the worker's last word: status.json says what went wrong
            message = (str(error) if isinstance(error, (ValueError, StorageFull))
                       else f"{type(error).__name__}: {error}")
            try:
                if log is not None:
                    log("error", {"message": message, "traceback": traceback.format_exc(limit=8)}, fit)
                write_status(run_dir, state="failed", ended=time.time(), error=message)
            except OSError as unrecorded:  # a full disk: the caller still gets the reason, with this note
                error.add_note(f"(the failure could not be recorded in {run_dir}: {unrecorded})")
            raise
        if config.extra.get("grown") and config.parent_run:  # a grown model: has it kept what it knew?
            from .use.grow import old_class_recall

            old_class_recall(run_dir.parent / config.parent_run, run_dir)
        write_status(run_dir, state="done", ended=time.time())
        return metrics


def _emitter(listeners: list):
    """emit(event, **info) for a task kind's own fit: the closed event list, told to the standard listeners."""
    def emit(event: str, **info) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: the loop announces only {', '.join(EVENTS)}")
        for listener in listeners:
            listener(event, info, None)
    return emit
