"""The fit loop's seams: a Task adds a trainable head without editing the loop (fit/loop.py); callbacks change the
loss or skip a step through the loop's events; unknown events are refused."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tl_core import worker
from tl_core.fit import loop
from tl_core.fit.callbacks import Callback
from tl_core.config import RunConfig
from tl_core.data.datasets import ingest_folder
from tl_core.ops.runs import create_run, read_events
from tl_core.fit.tasks import Classification


class CoarseLabelTask(Classification):
    """Classification plus a second head that learns a coarser label (class index < 2) from the same features."""

    def __init__(self, num_features: int):
        super().__init__(label_smoothing=0.1)
        self.coarse_head = nn.Linear(num_features, 2)
        self.initial = self.coarse_head.weight.detach().clone()
        self.steps = 0

    def modules(self):
        return [self.coarse_head]

    def step(self, batch, features, head):
        out = super().step(batch, features, head)
        coarse = self.coarse_head(features)
        out["loss"] = out["loss"] + F.cross_entropy(coarse.float(), (batch.labels < 2).long())
        out["coarse_logits"] = coarse
        self.steps += 1
        return out


def _config(small_sample, **changes):
    dataset = ingest_folder(small_sample)
    return RunConfig(dataset_dir=str(dataset.root), **{**dict(freeze="top-1", epochs=2, image_size=64,
                                                              batch_size=8, early_stopping=0), **changes})


def test_a_task_with_an_extra_head_trains_it_through_the_loop(small_sample):
    # Last-layer features, so the extra head's width is known (a fine-tune reads multi-layer ones by default).
    run_dir = create_run(_config(small_sample, features="last"))
    task = CoarseLabelTask(num_features=1280)  # EfficientNet-Lite0's pooled last-layer features
    metrics = worker.run(run_dir, task=task)
    steps = [e for e in read_events(run_dir) if e["event"] == "batch_end" and e.get("phase") == "finetune"]
    assert task.steps == len(steps) == 2 * 3  # 2 epochs × ceil(24 training images / 8)
    assert not torch.equal(task.coarse_head.weight.detach(), task.initial)  # the extra head learnt
    assert metrics["val_acc"] > 0.5 and (run_dir / "model.safetensors").exists()


class _SkipEveryStep(Callback):
    def __init__(self):
        self.losses_seen = 0

    def on_after_loss(self, info, fit):
        info["out"]["loss"] = info["out"]["loss"] * 0  # a callback may change the loss
        self.losses_seen += 1

    def on_before_step(self, info, fit):
        fit.skip_step = True


def test_callbacks_change_the_loss_and_skip_steps(small_sample):
    """With every step skipped, the fine-tuned weights stay the probe's: fine-tune epochs score as the probe did."""
    run_dir = create_run(_config(small_sample, freeze="all"))
    skipper = _SkipEveryStep()
    worker.run(run_dir, extra_callbacks=[skipper])
    assert skipper.losses_seen == 2 * 3
    events = read_events(run_dir)
    first_tuned = next(e["epoch"] for e in events if e["event"] == "epoch_end" and e["phase"] == "finetune")
    # The probe fine-tuning started from (a kept probe is refitted after, on other validation images).
    probe_last = [e for e in events if e["event"] == "epoch_end" and e["phase"] == "probe"
                  and e["epoch"] < first_tuned][-1]
    for tuned in (e for e in events if e["event"] == "epoch_end" and e["phase"] == "finetune"):
        assert tuned["val_acc"] == pytest.approx(probe_last["val_acc"])
    assert not any(e["event"] in ("after_loss", "before_step", "before_save") for e in events)  # not in the log


def test_the_loop_refuses_unknown_events(small_sample):
    fit = loop.Fit(_config(small_sample), create_run(_config(small_sample)), callbacks=[])
    with pytest.raises(ValueError, match="unknown event"):
        fit.emit("after_everything")


def test_a_later_phase_must_beat_the_kept_weights_by_more_than_the_noise():
    import types

    from tl_core.fit.callbacks import BestCheckpoint

    model = torch.nn.Linear(3, 2)
    fit = types.SimpleNamespace(model=model, val_idx=list(range(100)), best=None, emit=lambda *a, **k: None)
    best = BestCheckpoint()

    def epoch(n, phase, acc):
        best.on_epoch_end({"epoch": n, "phase": phase, "val_acc": acc, "val_loss": 1 - acc}, fit)
        return fit.best["epoch"]

    assert epoch(1, "probe", 0.78) == 1 and epoch(2, "probe", 0.80) == 2  # within a phase, any gain counts
    assert epoch(3, "finetune", 0.82) == 2  # +2 points on 100 images: inside one standard error (4 points)
    assert epoch(4, "finetune", 0.85) == 4  # +5 points: clear
    assert epoch(5, "finetune", 0.86) == 5
    assert fit.best["by_phase"]["finetune"]["epoch"] == 5 and fit.best["by_phase"]["probe"]["epoch"] == 2
