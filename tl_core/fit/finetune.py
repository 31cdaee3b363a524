"""The second phase of a fit: the chosen layer groups trained on images with AdamW, lower learning rates
for earlier groups, warm-up then cosine (or one-cycle), from cached prefix activations when the frozen
prefix sees the same input every epoch. If the loss diverges, the phase restarts once from the weights
it began with (the probe's) at RESTART_LR_FACTOR × the rate, and says so."""
from __future__ import annotations

import math
import time

import torch

from ..models import layers
from . import batches, optim
from .callbacks import PhaseDiverged, _changeable_state

RESTART_LR_FACTOR = 0.1


def run(fit, epochs: int) -> None:
    """The fine-tune phase of `fit` (a tl_core.fit.loop.Fit)."""
    net = fit.net
    names = [g.name for g in net.groups if g.name in net.trainable]
    fit.sources.phase = _source(fit)
    start_state = _changeable_state(net.model)
    lr_scale = 1.0
    for attempt in range(2):
        epochs_before = fit.progress.epoch
        fit.start_phase("finetune", epochs, message=f"training {', '.join(names)} on images",
                        groups=names, lr=fit.config.lr * lr_scale, reference_loss=fit.reference_loss())
        try:
            _epochs(fit, epochs, lr_scale)
            return
        except PhaseDiverged as diverged:
            net.model.load_state_dict(start_state, strict=False)
            epochs = max(epochs - (fit.progress.epoch - epochs_before - 1), 1)  # the epochs left of the budget
            lr_scale *= RESTART_LR_FACTOR
            if attempt == 0:
                message = (f"fine-tuning became unstable at epoch {diverged.epoch} (training loss "
                           f"{diverged.loss:.3g}); restarted from the probe's weights at a "
                           f"{1 / RESTART_LR_FACTOR:g}× lower learning rate")
            else:
                message = (f"fine-tuning became unstable again at epoch {diverged.epoch}; stopped it and "
                           f"kept the best weights so far")
            fit.emit("notice", kind="diverged", phase="finetune", epoch=diverged.epoch, message=message)


def _source(fit):
    """Cached prefix activations when the frozen prefix sees the same input every epoch, else pixels
    (a multi-layer model caches its frozen stages' pooled outputs with them)."""
    cfg, net = fit.config, fit.net
    if cfg.augment == "none" and cfg.bn_policy != "train":
        source = batches.prefix_source(net.model, net.groups, net.trainable, fit.sources.pixels, cfg.batch_size,
                                       fit.strategy.autocast, lambda message: fit.emit("notice", message=message))
        if source is not None:
            return source
    return fit.sources.pixels


def _epochs(fit, epochs: int, lr_scale: float) -> None:
    cfg, net, strategy, progress = fit.config, fit.net, fit.strategy, fit.progress
    optimizer = torch.optim.AdamW(optim.layerwise_param_groups(net.model, net.groups, net.trainable,
                                                               cfg.lr * lr_scale, fit.task.modules()),
                                  weight_decay=cfg.weight_decay)
    batch_size = strategy.batch_size_that_fits(
        min(cfg.batch_size, len(fit.train_idx)), lambda size: _forward_backward(fit, size, optimizer),
        lambda message: fit.emit("notice", message=message))
    n_train = len(fit.train_idx)
    n_local = math.ceil(n_train / strategy.world_size)  # this process's share (strategy.shard)
    drop_last = n_local % batch_size == 1 and n_local > 1  # BatchNorm cannot train on a batch of one
    steps_per_epoch = n_local // batch_size if drop_last else math.ceil(n_local / batch_size)
    scheduler = optim.lr_schedule(optimizer, cfg.schedule, cfg.warmup_epochs, steps_per_epoch, epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_idx = torch.tensor(fit.train_idx)
    for _ in range(epochs):
        progress.epoch += 1
        t_epoch = time.time()
        layers.set_train_mode(net.model, cfg.bn_policy)
        order = strategy.shard(train_idx[torch.randperm(n_train, generator=generator)])
        total_loss = total_correct = seen = 0
        for b in range(steps_per_epoch):
            batch, out = _one_batch(fit, order[b * batch_size:(b + 1) * batch_size], optimizer, scheduler)
            # Logged without label smoothing, like the probe's and the validation loss, so the curves compare.
            batch_loss, correct = fit.task.batch_metrics(out, batch)
            total_loss += batch_loss * len(batch.idx)
            total_correct += correct
            seen += len(batch.idx)
            fit.emit("batch_end", phase="finetune", epoch=progress.epoch, step=progress.step, batch=b + 1,
                     batches=steps_per_epoch, loss=batch_loss, lr=optimizer.param_groups[-1]["lr"],
                     images_per_s=seen / max(time.time() - t_epoch, 1e-9))
        train_seconds = time.time() - t_epoch
        val_loss, val_acc = fit.evaluate(fit.val_idx)
        fit.emit("epoch_end", phase="finetune", epoch=progress.epoch, step=progress.step,
                 train_loss=total_loss / seen, train_acc=float(total_correct) / seen,
                 val_loss=val_loss, val_acc=val_acc, seconds=time.time() - t_epoch, train_seconds=train_seconds,
                 elapsed=progress.elapsed(), images_per_s=seen / train_seconds, **fit.epoch_details())
        if fit.stop_phase:
            break


def _one_batch(fit, idx: torch.Tensor, optimizer, scheduler):
    """One optimisation step: the task's loss, which callbacks may change ("after_loss") or whose
    step they may skip ("before_step"), then backward and step through the strategy."""
    source = fit.sources.phase
    batch = source.batch(idx, train=True)
    with fit.strategy.autocast():
        out = fit.task.step(batch, source.features(batch.inputs), fit.net.head())
    fit.emit("after_loss", out=out, batch=batch)
    optimizer.zero_grad(set_to_none=True)
    fit.strategy.backward(out["loss"])
    fit.skip_step = False
    fit.emit("before_step", out=out, batch=batch)
    if not fit.skip_step:
        fit.strategy.step(optimizer)
    scheduler.step()
    fit.progress.step += 1
    return batch, out


def _forward_backward(fit, batch_size: int, optimizer) -> None:
    """One forward and backward pass of `batch_size` images, gradients discarded: does it fit?"""
    layers.set_train_mode(fit.net.model, fit.config.bn_policy)
    source = fit.sources.phase
    batch = source.batch(torch.tensor(fit.train_idx[:batch_size]), train=True)
    try:
        with fit.strategy.autocast():
            fit.net.head()(source.features(batch.inputs)).float().mean().backward()
    finally:
        optimizer.zero_grad(set_to_none=True)
