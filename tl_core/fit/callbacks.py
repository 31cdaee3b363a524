"""Listeners of the fit loop: the event log, cancel, early stopping, best checkpoint, NaN guard.

The loop announces a closed list of events (EVENTS); everything that is not training itself
listens here. Cancelling is an exception (CancelFit) so the loop's "after" events still run.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..ops.runs import RunFolder, open_event_log, validation_kind

EVENTS = ("fit_start", "phase_start", "after_loss", "before_step", "batch_end", "epoch_end", "checkpoint", "notice",
          "before_save", "fit_end", "cancelled", "error")
# What events.jsonl holds (the run-folder contract); the others carry tensors and are for callbacks only.
LOGGED_EVENTS = ("fit_start", "phase_start", "batch_end", "epoch_end", "checkpoint", "notice", "fit_end",
                 "cancelled", "error")


class CancelFit(Exception):
    """Raised by a callback to stop training cleanly (the STOP file, the user)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class PhaseDiverged(Exception):
    """Raised by DivergenceGuard: the phase's loss left the probe's far behind (the loop restarts it)."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"training loss {loss} at epoch {epoch}")
        self.epoch, self.loss = epoch, loss


class Emitter:
    """`emit(event, **info)`: what a task kind's fit is handed to announce the closed event list (EVENTS) to
    the worker's listeners (the event log, STOP, a distributed run's agreement, the caller's own).

    A kind whose loop is tl_core.fit.loop.Fit takes the same listeners as loop callbacks instead:
    `callbacks(*its_own)` puts them in order, the worker's first and the caller's last."""

    def __init__(self, first: list, last: list | None = None):
        self.first, self.last = list(first), list(last or [])

    def __call__(self, event: str, **info) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: the loop announces only {', '.join(EVENTS)}")
        for listener in [*self.first, *self.last]:
            listener(event, info, None)

    def callbacks(self, *loop_callbacks) -> list:
        return [*self.first, *loop_callbacks, *self.last]


class Callback:
    def __call__(self, event: str, info: dict, fit) -> None:
        handler = getattr(self, f"on_{event}", None)
        if handler is not None:
            handler(info, fit)


class EventLog(Callback):
    """Appends one JSON line per event to events.jsonl, flushed at once so a reader sees it live."""

    def __init__(self, path: Path | None = None, file=None):
        self.file = file if file is not None else open(path, "a", encoding="utf-8")

    @classmethod
    def for_run(cls, run_dir: Path) -> "EventLog":
        """The event log of a run folder (its events.jsonl, through the run folder)."""
        return cls(file=open_event_log(run_dir))

    def __call__(self, event: str, info: dict, fit) -> None:
        if event not in LOGGED_EVENTS:
            return
        line = {"t": round(time.time(), 3), "event": event, **info}
        self.file.write(json.dumps(line, default=_jsonable) + "\n")
        self.file.flush()
        if event in ("fit_end", "cancelled", "error"):
            self.file.close()


class StopFile(Callback):
    """Cancels when the run folder holds a STOP file; checked every batch and epoch."""

    def __init__(self, run_dir: Path):
        self.stop_path = RunFolder(run_dir).stop

    def _check(self, info, fit):
        if self.stop_path.exists():
            raise CancelFit("stopped by the user")

    on_batch_end = on_epoch_end = on_fit_start = _check


class NanGuard(Callback):
    """Fails fast with advice when the loss stops being a number."""

    def on_batch_end(self, info, fit):
        self._check(info.get("loss"), info)

    def on_epoch_end(self, info, fit):
        self._check(info.get("train_loss"), info)

    @staticmethod
    def _check(loss, info):
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at epoch {info.get('epoch')}, step {info.get('step')}: "
                "lower the learning rate, or train fewer layers")


class DivergenceGuard(Callback):
    """Stops a fine-tune whose batch loss is non-finite or, after a probe, far above where it started:
    above `over_chance` × ln(classes) (much worse than guessing) and above `over_probe` × the probe's
    training loss. Raises PhaseDiverged; the loop restores the phase's first weights and retries.
    Without a probe (training from random weights) only a non-finite loss counts."""

    def __init__(self, over_chance: float, over_probe: float):
        self.over_chance, self.over_probe = over_chance, over_probe
        self.limit = math.inf

    def on_phase_start(self, info, fit):
        reference = info.get("reference_loss")
        chance = math.log(max(len(fit.classes), 2))
        self.limit = math.inf if reference is None else max(self.over_chance * chance, self.over_probe * reference)

    def on_batch_end(self, info, fit):
        loss = info.get("loss")
        if info.get("phase") == "finetune" and loss is not None and not loss <= self.limit:
            raise PhaseDiverged(info["epoch"], loss)


# A fine-tune epoch replaces the probe's weights only when its validation accuracy is higher by more than this
# many standard errors of the probe's accuracy (1: about 3 images in 100 at 80 %).
NOISE_SE = 1.0


class BestCheckpoint(Callback):
    """Keeps a copy of the weights of the best epoch (highest val accuracy, then lowest val loss), records
    it in `fit.best`, and puts those weights back into the model before the run saves it. A later phase
    must win clearly (see _clear_gain): small validation sets cannot hand the choice to noise."""

    def __init__(self):
        self.best_key = None
        self.best_state = None
        self.best_epoch = None
        self.best_phase = None
        self.best_of_phase = {}  # phase → {"epoch", "val_acc", "val_loss"} of its best epoch

    def on_epoch_end(self, info, fit):
        key = (info["val_acc"], -info["val_loss"])
        phase = info.get("phase")
        seen = self.best_of_phase.get(phase)
        if seen is None or key > (seen["val_acc"], -seen["val_loss"]):
            self.best_of_phase[phase] = {"epoch": info["epoch"], "val_acc": info["val_acc"],
                                         "val_loss": info["val_loss"]}
        if self.best_key is None or (key > self.best_key and self._clear_gain(info, fit)):
            self.best_key = key
            self.best_epoch = info["epoch"]
            self.best_phase = phase
            self.best_state = _changeable_state(fit.model)
            fit.best = {"epoch": self.best_epoch, "phase": phase, "by_phase": self.best_of_phase}
            fit.emit("checkpoint", epoch=info["epoch"], phase=info.get("phase"),
                     val_acc=info["val_acc"], val_loss=info["val_loss"])


    def _clear_gain(self, info, fit) -> bool:
        """Within a phase any better epoch counts. An epoch of a later phase (fine-tuning: far more parameters
        fitted to the same few validation images) must beat the kept one by more than the validation set's
        noise: NOISE_SE standard errors of an accuracy measured on n_val images, sqrt(p(1-p)/n)."""
        if info.get("phase") == self.best_phase:
            return True
        n_val = max(len(getattr(fit, "val_idx", ()) or ()), 1)
        # A fine-tune run also clears the default's own probe on the same images (Fit.set_probe_bar).
        p = max(self.best_key[0], getattr(fit, "probe_bar", None) or 0.0)
        return info["val_acc"] - p > NOISE_SE * math.sqrt(max(p * (1 - p), 1 / n_val) / n_val)

    def refit(self, fit) -> None:
        """Put the kept weights back now and forget them: a refit of the same phase on more images follows
        (tl_core.fit.loop.Fit.refit_kept_probe), whose best epoch is kept instead. The held-out scores stay in
        `by_phase` ("held_out_probe", "finetune") for the words that say why."""
        self.on_before_save({}, fit)
        if "probe" in self.best_of_phase:
            self.best_of_phase["held_out_probe"] = self.best_of_phase.pop("probe")
        self.best_key = self.best_state = self.best_epoch = self.best_phase = None
        fit.best = None

    def on_before_save(self, info, fit):
        if self.best_state is not None:
            # The checkpoint holds only what training can change; the frozen rest is still in the model.
            unexpected = fit.model.load_state_dict(self.best_state, strict=False).unexpected_keys
            assert not unexpected, f"checkpoint keys the model lacks: {unexpected[:3]}"


def _changeable_state(model) -> dict:
    """A CPU copy of what training can change: trainable parameters and buffers (BatchNorm statistics).
    Frozen weights cannot change, so copying them at every better epoch is wasted work (a head-only
    run on a 28M-parameter backbone would copy 112 MB to keep a 10k-parameter head)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if k in trainable or k in buffers}


class EarlyStopping(Callback):
    """Ends a phase after `patience` epochs without a better validation loss."""

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience = patience
        self.min_delta = min_delta
        self.reset()

    def on_phase_start(self, info, fit):
        self.reset()

    def reset(self):
        self.best_loss = math.inf
        self.bad_epochs = 0

    def on_epoch_end(self, info, fit):
        if self.patience <= 0:
            return
        if info["val_loss"] < self.best_loss - self.min_delta:
            self.best_loss = info["val_loss"]
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            fit.stop_phase = True
            fit.emit("notice", message=f"early stopping: validation loss did not improve for {self.patience} epochs",
                     epoch=info["epoch"])


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ConsoleProgress(Callback):
    """Prints a line per epoch (and the notices) for the command line.

    A notice about an epoch (early stopping's) is emitted by a callback while that epoch's end is still being
    announced, before this one hears of the epoch: it waits, so the epoch's line comes first.
    """

    def __init__(self):
        self.printed_epoch = 0
        self.waiting: list[str] = []

    def __call__(self, event: str, info: dict, fit) -> None:
        if event not in ("notice", "epoch_end", "batch_end", "after_loss", "before_step"):
            self._print_waiting()  # a notice about an epoch that never ended (a restart, a stop) still shows
        super().__call__(event, info, fit)

    def _print_waiting(self) -> None:
        for message in self.waiting:
            print(f"  {message}", flush=True)
        self.waiting.clear()

    def on_fit_start(self, info, fit):
        if "message" in info:  # a task kind's own fit says in words what it is fitting (tl_core.kinds)
            print(info["message"], flush=True)
            return
        if validation_kind(info) == "cv":
            images = f"{info['n_train']} images, validated by {info['validation']}"
        else:
            images = f"{info['n_train']} train / {info['n_val']} validation images ({info.get('validation', '')})"
        print(f"training on {info['device']}: {images}, "
              f"{info['trainable_params']:,} of {info['total_params']:,} parameters trainable", flush=True)

    def on_notice(self, info, fit):
        if isinstance(info.get("epoch"), int) and info["epoch"] > self.printed_epoch:
            self.waiting.append(info["message"])
            return
        print(f"  {info['message']}", flush=True)

    def on_phase_start(self, info, fit):
        if "message" in info:  # a task kind's steps (features, memory bank, threshold)
            print(f"{info['message']}", flush=True)

    def on_epoch_end(self, info, fit):
        if "val_map50" in info:  # a detector's epoch (tl_core.detect)
            print(f"  epoch {info['epoch']:3d} train loss {info['train_loss']:.3f} (class "
                  f"{info['train_classification']:.3f}, box {info['train_box']:.3f}) | val mAP@50 "
                  f"{info['val_map50']:.3f} mAP {info['val_map']:.3f} | {info['seconds']:.1f} s", flush=True)
            self.printed_epoch = info["epoch"]
            self._print_waiting()
            return
        print(f"  epoch {info['epoch']:3d} [{info.get('phase', '')}] train loss {info['train_loss']:.3f} "
              f"acc {info['train_acc']:.1%} | val loss {info['val_loss']:.3f} acc {info['val_acc']:.1%} "
              f"| {info['seconds']:.1f} s", flush=True)
        self.printed_epoch = info["epoch"]
        self._print_waiting()
