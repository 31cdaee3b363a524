"""The fit loop: from a run folder's RunConfig to a trained model and every file of the run contract.

Two phases, announced through a closed list of events (callbacks.EVENTS) that callbacks listen to:
- "probe": the frozen backbone's features are computed once and the new head is fitted on them
  with L-BFGS (tl_core.fit.probe). With the head as the only trainable group and no augmentation this
  is the whole run.
- "finetune": the chosen groups train on images with AdamW, lower learning rates for earlier
  groups, warm-up then cosine (or one-cycle). If the loss diverges, the phase restarts once from the
  probe's weights at a 10× lower rate.
The seams: a Task computes the loss of a batch (tl_core.fit.tasks), a batch source feeds pixels, cached
prefix activations or cached features (tl_core.fit.batches), a Strategy owns the device, backward and
step (tl_core.fit.strategy). The best epoch of either phase is kept (BestCheckpoint restores it on
"before_save"), and tl_core.fit.outputs writes what the run folder promises.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import backbones, layers, multilayer
from . import batches, optim
from ..data.augment import make_augment
from .callbacks import (EVENTS, BestCheckpoint, CancelFit, DivergenceGuard, EarlyStopping, NanGuard, PhaseDiverged,
                        TrainingDiverged, _changeable_state)
from ..config import PROBE_EPOCHS_BEFORE_FINETUNE, RunConfig
from ..data.datasets import decode_images
from ..models.devices import describe
from .imbalance import class_weighting
from .outputs import save_outputs
from .probe import PROBE_ITERS_PER_EPOCH, HeadFits, choose_features, l2_at, one_thread
from .prototypes import PrototypeFits, head_for
from ..ops.runs import record_facts
from ..ops.storage import workspace_root
from .run_data import RunData, load_run_data, with_cross_validation
from .strategy import SingleDevice, channels_last_helps
from .tasks import Classification, Task

PIXELS_ON_GPU_LIMIT = 2 << 30  # bytes of uint8 images kept on the GPU for the whole run
# A fine-tune batch whose loss exceeds max(DIVERGED_OVER_CHANCE × ln(classes), DIVERGED_OVER_PROBE × the
# probe's training loss) has lost what the probe knew: the phase restarts from the probe's weights once, at
# RESTART_LR_FACTOR × the learning rate.
DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE, RESTART_LR_FACTOR = 2.0, 4.0, 0.1


def standard_callbacks(config: RunConfig) -> list:
    """The loop's own listeners, in order: divergence and NaN guards, the best checkpoint, early stopping."""
    return [DivergenceGuard(DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE), NanGuard(), BestCheckpoint(),
            EarlyStopping(config.early_stopping)]


class Fit:
    """One training run; `emit` tells every callback what happened."""

    def __init__(self, config: RunConfig, run_dir: Path, callbacks: list, task: Task | None = None, strategy=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.callbacks = callbacks
        self.task = task or Classification(config.label_smoothing)
        self.strategy = strategy or SingleDevice(config.device)  # distributed.FabricDDP for several processes
        self.device = self.strategy.device
        self.t0 = time.time()
        self.epoch = self.step = 0
        self.stop_phase = False  # a callback sets it to end the current phase after this epoch
        self.skip_step = False  # a callback sets it on "before_step" to skip this optimiser step
        self.best = None  # BestCheckpoint's record: {"epoch", "phase", "by_phase"}
        self.model = self.groups = self.trainable = self.head_name = self.counts = self.data = None
        self.classes, self.paths, self.labels, self.train_idx, self.val_idx = [], [], None, [], []
        self.folds = None  # set when head-only training validates by cross-validation
        self.validation = ""  # in words: held out, a separate set, or cross-validation
        self.validation_method = {}  # the same as data: {"kind": "holdout" | "separate" | "cv", ...}
        self.preprocess, self.size, self.channels_last, self.trains_on_images = {}, 0, False, False
        self.feature_kind = "last"  # what the head reads: "last" or "multi-layer" (tl_core.models.multilayer)
        self.head_kind = "logistic"  # how the probe fits the head: "logistic" or "prototype" (tl_core.fit.prototypes)
        self.pixels = self.features = self.source = None  # batch sources: images, frozen features, the phase's own
        self.val_probs_at = {}  # epoch → validation probabilities, where the loop already computed them
        self.extra_metrics = {}  # what callbacks add to metrics.json (a target domain's measures)
        self.class_weights = None  # per-class loss weights (CPU) when the classes are weighted (tl_core.fit.imbalance)
        self.class_weighting = {}  # what was decided and why: {"on", "ratio", "words"}

    def emit(self, event: str, **info) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: the loop announces only {', '.join(EVENTS)}")
        for callback in self.callbacks:
            callback(event, info, self)

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.data = self._load_data()
        self._use(self.data)
        body = backbones.create_model(cfg.backbone, len(self.classes), weights=cfg.weights)
        self.feature_kind = _feature_kind(cfg, body)
        self.model = multilayer.build(body, len(self.classes), self.feature_kind)
        self.preprocess = backbones.data_config(self.model, cfg.image_size)
        self.size = self.preprocess["input_size"][-1]
        pixels = decode_images(self.paths, self.size, self.preprocess["crop_pct"], self.preprocess["interpolation"],
                               cache_dir=workspace_root() / "cache" / "pixels")
        if self.device.type == "cuda" and pixels.numel() < PIXELS_ON_GPU_LIMIT:
            pixels = pixels.to(self.device)  # small sets: no host→device copy per batch
        self.model.to(self.device)
        for module in self.task.modules():
            module.to(self.device)
        self.channels_last = channels_last_helps(cfg.backbone, self.device, len(self.paths) * cfg.epochs)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            # Stored that way once, each batch normalises straight into the layout the convolutions want.
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        self.pixels = batches.PixelSource(self.model, pixels, self.labels,
                                          batches.normalizer(self.preprocess, self.device, self.channels_last),
                                          make_augment(cfg.augment, self.size))
        self.groups = layers.layer_groups(self.model)
        self.trainable = layers.parse_freeze(cfg.freeze, self.groups)
        self.head_name = self.groups[-1].name
        self.trains_on_images = self.trainable != {self.head_name} or cfg.augment != "none"
        record_facts(self.run_dir, device=describe(self.device), device_type=self.device.type,
                             precision=str(self.strategy.amp_dtype or torch.float32).replace("torch.", ""),
                             channels_last=self.channels_last, classes=self.classes, preprocess=self.preprocess,
                             features=self.feature_kind)

    def _load_data(self) -> RunData:
        return load_run_data(self.config)

    def _use(self, data: RunData) -> None:
        self.classes, self.paths, self.folds = data.classes, data.paths, data.folds
        self.labels = torch.tensor(data.labels, dtype=torch.long, device=self.device)
        self.train_idx, self.val_idx = data.train_idx, data.val_idx
        self.validation, self.validation_method = data.validation, data.validation_method

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict:
        self.prepare()
        cfg = self.config
        probe_epochs = (PROBE_EPOCHS_BEFORE_FINETUNE if cfg.probe_first else 0) if self.trains_on_images else cfg.epochs
        if not self.trains_on_images and not cfg.val_dataset_dir:
            self._use(with_cross_validation(self.data, cfg.seed))
        self.counts = layers.apply_freeze(self.model, self.groups, self.trainable, cfg.bn_policy)
        record_facts(self.run_dir, n_train=len(self.train_idx), n_val=len(self.val_idx),
                             validation=self.validation)
        self.emit("fit_start", epochs=(probe_epochs + (cfg.epochs if self.trains_on_images else 0)),
                  probe_epochs=probe_epochs, n_train=len(self.train_idx), n_val=len(self.val_idx),
                  validation=self.validation, validation_method=self.validation_method, elapsed=time.time() - self.t0,
                  classes=self.classes, device=describe(self.device), image_size=self.size,
                  trainable_params=self.counts["trainable_params"], total_params=self.counts["total_params"],
                  trainable_groups=self.counts["trainable_groups"])
        self._weigh_classes()
        if probe_epochs:
            self.probe(probe_epochs)
        if self.trains_on_images:
            self.finetune(cfg.epochs)
        metrics = self.save()
        if not metrics:
            raise TrainingDiverged("training became unstable before its first epoch ended, twice: "
                                   "lower the learning rate, or train fewer layers")
        self.emit("fit_end", val_acc=metrics["val_acc"], val_loss=metrics["val_loss"],
                  best_epoch=metrics["best_epoch"], wall_s=metrics["wall_s"])
        return metrics

    def run_until_stopped(self) -> dict:
        """run(); when cancelled, say so and save the best weights so far, then let CancelFit go on (marked
        `announced`, so the worker does not say it twice)."""
        try:
            return self.run()
        except CancelFit as stop:
            self.emit("cancelled", reason=str(stop))
            self.save()
            stop.announced = True
            raise

    def save(self) -> dict:
        """Restore the best weights (BestCheckpoint listens to "before_save") and write the run's outputs."""
        if self.model is None or self.groups is None:
            return {}
        self.emit("before_save")
        return save_outputs(self) if self.best is not None else {}

    def _start_phase(self, phase: str, epochs: int, **info) -> None:
        self.stop_phase = False
        message = info.pop("message")
        self.emit("phase_start", phase=phase, epochs=epochs, epoch=self.epoch, **info)
        self.emit("notice", phase=phase, message=message, epochs=epochs)

    def _weigh_classes(self) -> None:
        """Weight the loss by 1/class count when the training classes are imbalanced (RunConfig.class_weights):
        the probe's fits and the task's loss both use the weights; a notice says what was done."""
        counts = self.labels[self.train_idx].bincount(minlength=len(self.classes)).tolist()
        choice = class_weighting(self.config.class_weights, counts)
        self.class_weighting = {key: choice[key] for key in ("on", "ratio", "words")}
        record_facts(self.run_dir, class_weights=self.class_weighting)
        if choice["on"]:
            self.class_weights = torch.tensor(choice["weights"], dtype=torch.float32)
            self.task.class_weight = self.class_weights.to(self.device)
        if choice["notice"]:
            self.emit("notice", kind="class_weights", message=choice["words"])

    # ---- phase 1: the head on frozen features -------------------------------------------
    def probe(self, epochs: int) -> None:
        """Fit the head as a logistic regression on standardised frozen features, one step down the
        regularisation path an epoch: validation picks how much regularisation this data set needs."""
        self._start_phase("probe", epochs, message="fitting the new head on the backbone's frozen features")
        self.features = self._frozen_features()
        # The probe's matrices are small: on the CPU they skip thousands of tiny kernel launches and
        # the start-up of CUDA's solver library (seconds on an H100, for a fit that takes 0.3 s here).
        feats = self.features.features_all.float().cpu()
        train_masks, val_sets = self._probe_fits()
        self.head_kind = head_for(self.config.head, self.labels.bincount(minlength=len(self.classes)).tolist())
        record_facts(self.run_dir, head=self.head_kind)
        if self.head_kind == "prototype":
            smallest = int(self.labels.bincount(minlength=len(self.classes)).min())
            self.emit("notice", phase="probe", kind="head", message=(
                f"a prototype head (each class the mean of its images' features): the smallest class has "
                f"{smallest} image{'s' if smallest != 1 else ''}, too few to fit a regression"
                if self.config.head == "auto" else "a prototype head (each class the mean of its images' features)"))
        fits_class = PrototypeFits if self.head_kind == "prototype" else HeadFits
        with one_thread():
            if self.config.features == "auto" and self.feature_kind == "multi-layer" \
                    and self.validation_method.get("kind") != "none":  # nothing to measure the choice on
                feats = self._choose_features(feats, train_masks, val_sets, epochs, fits_class)
            fits = fits_class(feats, self.labels.cpu(), train_masks, len(self.classes),
                              class_weights=self.class_weights)
            for k in range(epochs):
                self._probe_epoch(fits, val_sets, l2_at(k))
                if self.stop_phase:
                    break

    def _probe_fits(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(fits × images training masks, each fit's validation images): one fit per fold (validated on that
        fold), then the kept one on every image; or one fit on the training images, validated on the rest."""
        n = len(self.paths)
        if self.folds:
            train_masks = torch.ones(len(self.folds) + 1, n, dtype=torch.bool)
            for f, fold in enumerate(self.folds):
                train_masks[f, fold] = False
            return train_masks, [torch.tensor(fold, dtype=torch.long) for fold in self.folds]
        train_masks = torch.zeros(1, n, dtype=torch.bool)
        train_masks[0, self.train_idx] = True
        return train_masks, [torch.tensor(self.val_idx, dtype=torch.long)]

    def _choose_features(self, feats: torch.Tensor, train_masks: torch.Tensor, val_sets: list[torch.Tensor],
                         epochs: int, fits_class) -> torch.Tensor:
        """Keep multi-layer features only where they validate better than the last layer's; the features kept."""
        choice = choose_features(feats, self.model.last_features, self.labels.cpu(), train_masks, val_sets,
                                 len(self.classes), epochs, self.config.label_smoothing, fits_class,
                                 self.class_weights)
        record_facts(self.run_dir, features=choice["features"], features_choice=choice)
        self.emit("notice", phase="probe", kind="features", message=choice["words"])
        if choice["features"] == "last":
            self._use_last_layer()
            feats = feats[:, -self.model.num_features:]
        return feats

    def _use_last_layer(self) -> None:
        """Drop the multi-layer wrapper: the plain model with a fresh head, its groups and frozen plan."""
        self.model = self.model.body
        self.model.reset_classifier(len(self.classes))
        self.model.to(self.device)
        self.feature_kind = "last"
        self.pixels.model = self.model
        self.features = batches.FeatureSource(self.features.features_all[:, -self.model.num_features:], self.labels)
        self.groups = layers.layer_groups(self.model)
        self.trainable = layers.parse_freeze(self.config.freeze, self.groups)
        self.head_name = self.groups[-1].name
        self.counts = layers.apply_freeze(self.model, self.groups, self.trainable, self.config.bn_policy)

    def _probe_epoch(self, fits: HeadFits, val_sets: list[torch.Tensor], l2: float) -> None:
        t_epoch = time.time()
        fits.step(l2, self.config.label_smoothing)
        fits.copy_to(self.model.get_classifier())
        with torch.no_grad():
            log_probs = fits.logits().log_softmax(-1)  # fits × images × classes
            val_log_probs = fits.validation_log_probs(val_sets)[self.val_idx]
            kept_train = fits.train_masks[-1]
            train_loss, train_acc = _loss_acc(log_probs[-1][kept_train], fits.y[kept_train], log_probs=True)
            val_loss, val_acc = _loss_acc(val_log_probs, fits.y[self.val_idx], log_probs=True)
        self.epoch += 1
        self.step += PROBE_ITERS_PER_EPOCH
        self.val_probs_at[self.epoch] = val_log_probs.exp()
        self.emit("epoch_end", phase="probe", epoch=self.epoch, step=self.step, l2=l2,
                  train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                  seconds=time.time() - t_epoch, elapsed=time.time() - self.t0,
                  images_per_s=len(self.train_idx) / max(time.time() - t_epoch, 1e-9))

    def _frozen_features(self) -> batches.FeatureSource:
        key = batches.feature_key(self.config.backbone, self.config.weights,
                                  {**self.preprocess, "features": self.feature_kind}, self.paths)
        return batches.feature_source(
            self.pixels, workspace_root() / "cache" / "features" / f"{key}.npy", self.config.batch_size,
            on_batch=lambda b, done, total: self.emit("batch_end", phase="features", epoch=0, batch=b,
                                                      done=done, total=total),
            on_reuse=lambda message: self.emit("notice", message=message))

    # ---- phase 2: fine-tune on images ------------------------------------------------------
    def finetune(self, epochs: int) -> None:
        """Train the chosen groups on images; if the loss diverges, restart once from the weights the
        phase began with (the probe's) at a lower learning rate, and say so."""
        names = [g.name for g in self.groups if g.name in self.trainable]
        self.source = self._finetune_source()
        start_state = _changeable_state(self.model)
        lr_scale = 1.0
        for attempt in range(2):
            epochs_before = self.epoch
            self._start_phase("finetune", epochs, message=f"training {', '.join(names)} on images",
                              groups=names, lr=self.config.lr * lr_scale, reference_loss=self._reference_loss())
            try:
                self._finetune_epochs(epochs, lr_scale)
                return
            except PhaseDiverged as diverged:
                self.model.load_state_dict(start_state, strict=False)
                epochs = max(epochs - (self.epoch - epochs_before - 1), 1)  # the epochs left of the budget
                lr_scale *= RESTART_LR_FACTOR
                if attempt == 0:
                    message = (f"fine-tuning became unstable at epoch {diverged.epoch} (training loss "
                               f"{diverged.loss:.3g}); restarted from the probe's weights at a "
                               f"{1 / RESTART_LR_FACTOR:g}× lower learning rate")
                else:
                    message = (f"fine-tuning became unstable again at epoch {diverged.epoch}; stopped it and "
                               f"kept the best weights so far")
                self.emit("notice", kind="diverged", phase="finetune", epoch=diverged.epoch, message=message)

    def _finetune_source(self):
        """Cached prefix activations when the frozen prefix sees the same input every epoch, else pixels."""
        cfg = self.config
        if cfg.augment == "none" and cfg.bn_policy != "train":
            source = batches.prefix_source(self.model, self.groups, self.trainable, self.pixels, cfg.batch_size,
                                           self.strategy.autocast, lambda message: self.emit("notice", message=message))
            if source is not None:
                return source
        return self.pixels

    def _reference_loss(self) -> float | None:
        """The probe's training loss, which a healthy fine-tune starts from; None without a probe."""
        if self.features is None:
            return None
        with torch.no_grad():
            logits = self.model.get_classifier()(self.features.features_all[self.train_idx].float())
            return F.cross_entropy(logits, self.labels[self.train_idx]).item()

    def _finetune_epochs(self, epochs: int, lr_scale: float) -> None:
        cfg = self.config
        optimizer = torch.optim.AdamW(optim.layerwise_param_groups(self.model, self.groups, self.trainable,
                                                                   cfg.lr * lr_scale, self.task.modules()),
                                      weight_decay=cfg.weight_decay)
        batch_size = self.strategy.batch_size_that_fits(
            min(cfg.batch_size, len(self.train_idx)), lambda size: self._forward_backward(size, optimizer),
            lambda message: self.emit("notice", message=message))
        n_train = len(self.train_idx)
        n_local = math.ceil(n_train / self.strategy.world_size)  # this process's share (strategy.shard)
        drop_last = n_local % batch_size == 1 and n_local > 1  # BatchNorm cannot train on a batch of one
        steps_per_epoch = n_local // batch_size if drop_last else math.ceil(n_local / batch_size)
        scheduler = optim.lr_schedule(optimizer, cfg.schedule, cfg.warmup_epochs, steps_per_epoch, epochs)
        generator = torch.Generator().manual_seed(cfg.seed)
        train_idx = torch.tensor(self.train_idx)
        for _ in range(epochs):
            self.epoch += 1
            t_epoch = time.time()
            layers.set_train_mode(self.model, cfg.bn_policy)
            order = self.strategy.shard(train_idx[torch.randperm(n_train, generator=generator)])
            total_loss = total_correct = seen = 0
            for b in range(steps_per_epoch):
                batch, out = self._one_batch(order[b * batch_size:(b + 1) * batch_size], optimizer, scheduler)
                # Logged without label smoothing, like the probe's and the validation loss, so the curves compare.
                batch_loss, correct = self.task.batch_metrics(out, batch)
                total_loss += batch_loss * len(batch.idx)
                total_correct += correct
                seen += len(batch.idx)
                self.emit("batch_end", phase="finetune", epoch=self.epoch, step=self.step, batch=b + 1,
                          batches=steps_per_epoch, loss=batch_loss, lr=optimizer.param_groups[-1]["lr"],
                          images_per_s=seen / max(time.time() - t_epoch, 1e-9))
            train_seconds = time.time() - t_epoch
            val_loss, val_acc = self._evaluate(self.val_idx)
            self.emit("epoch_end", phase="finetune", epoch=self.epoch, step=self.step,
                      train_loss=total_loss / seen, train_acc=float(total_correct) / seen,
                      val_loss=val_loss, val_acc=val_acc, seconds=time.time() - t_epoch, train_seconds=train_seconds,
                      elapsed=time.time() - self.t0, images_per_s=seen / train_seconds, **self.epoch_details())
            if self.stop_phase:
                break

    def _one_batch(self, idx: torch.Tensor, optimizer, scheduler):
        """One optimisation step: the task's loss, which callbacks may change ("after_loss") or whose
        step they may skip ("before_step"), then backward and step through the strategy."""
        batch = self.source.batch(idx, train=True)
        with self.strategy.autocast():
            out = self.task.step(batch, self.source.features(batch.inputs), self.model.get_classifier())
        self.emit("after_loss", out=out, batch=batch)
        optimizer.zero_grad(set_to_none=True)
        self.strategy.backward(out["loss"])
        self.skip_step = False
        self.emit("before_step", out=out, batch=batch)
        if not self.skip_step:
            self.strategy.step(optimizer)
        scheduler.step()
        self.step += 1
        return batch, out

    def _forward_backward(self, batch_size: int, optimizer) -> None:
        """One forward and backward pass of `batch_size` images, gradients discarded: does it fit?"""
        layers.set_train_mode(self.model, self.config.bn_policy)
        batch = self.source.batch(torch.tensor(self.train_idx[:batch_size]), train=True)
        try:
            with self.strategy.autocast():
                self.model.get_classifier()(self.source.features(batch.inputs)).float().mean().backward()
        finally:
            optimizer.zero_grad(set_to_none=True)

    # ---- evaluation ------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_probs(self, idx: list[int]) -> torch.Tensor:
        """Class probabilities of the images `idx`, in eval mode; from cached features while the body is untouched."""
        self.model.eval()
        head = self.model.get_classifier()
        source = self.features if self.features is not None and not self.trains_on_images else self.source
        source = source or self.pixels
        out = []
        for start in range(0, len(idx), self.config.batch_size):
            batch = source.batch(torch.tensor(idx[start:start + self.config.batch_size]))
            # Frozen features stay fp32: the probe fitted the head on them so.
            with nullcontext() if source is self.features else self.strategy.autocast():
                out.append(self._probabilities(head(source.features(batch.inputs))).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def epoch_details(self) -> dict:
        """More of a fine-tune epoch_end event, from the last validation (a multi-task fit's per-task scores)."""
        return {}

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)

    def _evaluate(self, idx: list[int]) -> tuple[float, float]:
        probs = self.predict_probs(idx)
        return _loss_acc(probs.clamp_min(1e-12).log(), self.labels[idx], log_probs=True)


def _feature_kind(config: RunConfig, body: torch.nn.Module) -> str:
    """What the head reads. "auto": multi-layer features for a head-only run (the probe then keeps them only
    where they validate better); a run that trains layers reads the last layer, whose frozen prefix is cached."""
    if config.features != "auto":
        return config.features
    head_only = config.freeze == "head" and config.augment == "none"
    return "multi-layer" if head_only and multilayer.supports(body) else "last"


def _loss_acc(logits: torch.Tensor, y: torch.Tensor, log_probs: bool = False) -> tuple[float, float]:
    y = y.to(logits.device)
    loss = F.nll_loss(logits, y) if log_probs else F.cross_entropy(logits, y)
    return loss.item(), (logits.argmax(1) == y).float().mean().item()
