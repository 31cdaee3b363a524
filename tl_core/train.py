"""The fit loop: from a run folder's RunConfig to a trained model and every file of the run contract.

Two phases, both announced through callbacks:
- "probe": the frozen backbone's features are computed once and the new head is fitted on them
  with L-BFGS (a well-fitted logistic regression, milliseconds an epoch). With the head as the
  only trainable group and no augmentation this is the whole run.
- "finetune": the chosen groups train on images with AdamW, lower learning rates for earlier
  groups, warm-up then cosine (or one-cycle). Frozen layers build no autograd graph, because
  neither their parameters nor their inputs require grad.
The best epoch of either phase is kept, so a fine-tune that makes things worse cannot hurt.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import backbones, layers
from .augment import make_augment, normalize
from .callbacks import (BestCheckpoint, CancelFit, DivergenceGuard, EarlyStopping, EventLog, NanGuard, PhaseDiverged,
                        StopFile, TrainingDiverged, _changeable_state)
from .config import RunConfig
from .datasets import decode_images, load_dataset, stratified_folds, stratified_split
from .devices import autocast_dtype, describe, pick_device
from .evaluate import classification_metrics
from .runs import update_config_record, write_status
from .split import PrefixSplit, stage_split_point
from .storage import atomic_file, atomic_write_bytes, atomic_write_json, workspace_root

LAYER_LR_DECAY = 0.7          # each group below the head learns at 0.7× the rate of the one above
# L-BFGS iterations an epoch of the probe may take (it stops earlier once converged). Enough to
# converge at each L2 step, so validation picks the L2 and not how far the optimiser happened to get:
# on Fashion-MNIST 8 iterations picked a worse step (test 79.6 %) than 30 or 60 (81.2 %).
PROBE_ITERS_PER_EPOCH = 30
PROBE_EPOCHS_BEFORE_FINETUNE = 5
CV_FOLDS = 5                  # head-only runs validate by k-fold cross-validation on the cached features
CUDA_CHANNELS_LAST_MIN_PASSES = 50_000  # images × epochs from which channels-last repays its start-up on CUDA
PIXELS_ON_GPU_LIMIT = 2 << 30  # bytes of uint8 images kept on the GPU for the whole run
ACTIVATION_CACHE_LIMIT = 3 << 30  # bytes of cached frozen-prefix activations, beyond which the prefix reruns
# The probe's L2 penalty (mean loss + l2·‖W‖², standardised features) walks down from 0.3, halving each
# epoch. Measured on Fashion-MNIST (200 train / 500 test, Lite0): fixed 1e-3 gave 77-79 %, 0.03-0.1 gave 81 %.
PROBE_L2_START, PROBE_L2_STEP = 0.3, 0.5
# Each feature's standard deviation is floored at this fraction of the median one before the probe's
# weights are folded back onto raw features (W / std). Without it, features that barely vary got weights
# up to 288 and the head blew up as soon as fine-tuning moved them; with 0.2 the largest is 1.7 and test
# accuracy rises 77.2 → 78.6 % (Fashion-MNIST, 20 a class, mean of 5 draws).
PROBE_STD_FLOOR = 0.2
# A fine-tune batch whose loss exceeds max(DIVERGED_OVER_CHANCE × ln(classes), DIVERGED_OVER_PROBE × the
# probe's training loss) has lost what the probe knew: the phase restarts from the probe's weights once, at
# RESTART_LR_FACTOR × the learning rate.
DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE, RESTART_LR_FACTOR = 2.0, 4.0, 0.1


def run(run_dir: str | Path, extra_callbacks: list | None = None, on_wait=None) -> dict:
    """Train the prepared run in `run_dir` and keep status.json true whatever happens.

    The run is claimed first, with a device slot of its workspace (jobs.claim_run): one worker per run,
    never more runs than slots, whoever calls. While every slot is busy it waits (`on_wait(message)` says
    so); jobs.RunBusy when another worker already trains this run.
    """
    from .jobs import claim_run  # imported here: only this function deals with claiming
    from .storage import StorageFull

    run_dir = Path(run_dir)
    with claim_run(run_dir, on_wait=on_wait) as claim:
        if claim.cancelled:  # stopped while it waited for a slot
            return {}
        log = fit = None
        try:
            write_status(run_dir, state="running", pid=os.getpid(), started=time.time(), error=None)
            log = EventLog(run_dir / "events.jsonl")
            config = RunConfig.load(run_dir)
            fit = Fit(config, run_dir, [log, StopFile(run_dir),
                                        DivergenceGuard(DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE),
                                        NanGuard(), BestCheckpoint(),
                                        EarlyStopping(config.early_stopping), *(extra_callbacks or [])])
            metrics = fit.run()
        except CancelFit as stop:
            fit.emit("cancelled", reason=str(stop))
            fit.save_outputs()
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
        write_status(run_dir, state="done", ended=time.time())
        return metrics


class Fit:
    """One training run; `emit` tells every callback what happened."""

    def __init__(self, config: RunConfig, run_dir: Path, callbacks: list):
        self.config = config
        self.run_dir = Path(run_dir)
        self.callbacks = callbacks
        self.stop_phase = False
        self.epoch = 0
        self.step = 0
        self.features = None
        self.model = None
        self.folds = None  # set when head-only training validates by cross-validation
        self.validation = ""  # in words: held out, a separate set, or cross-validation
        self.val_probs_at = {}  # epoch → validation probabilities, where the loop already computed them
        self.split = None  # set while fine-tuning on cached frozen-prefix activations

    def emit(self, event: str, **info) -> None:
        for callback in self.callbacks:
            callback(event, info, self)

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        self.amp_dtype = autocast_dtype(self.device)
        self._load_data()
        self.model = backbones.create_model(cfg.backbone, len(self.classes), weights=cfg.weights)
        self.preprocess = backbones.data_config(self.model, cfg.image_size)
        self.size = self.preprocess["input_size"][-1]
        self.pixels = decode_images(self.paths, self.size, self.preprocess["crop_pct"],
                                    self.preprocess["interpolation"], cache_dir=workspace_root() / "cache" / "pixels")
        if self.device.type == "cuda" and self.pixels.numel() < PIXELS_ON_GPU_LIMIT:
            self.pixels = self.pixels.to(self.device)  # small sets: no host→device copy per batch
        self.labels = self.labels.to(self.device)
        self.model.to(self.device)
        self.channels_last = _channels_last_helps(cfg.backbone, self.device, len(self.paths) * cfg.epochs)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            # Stored that way once, each batch normalises straight into the layout the convolutions want.
            self.pixels = self.pixels.contiguous(memory_format=torch.channels_last)
        self.groups = layers.layer_groups(self.model)
        self.trainable = layers.parse_freeze(cfg.freeze, self.groups)
        self.head_name = self.groups[-1].name
        update_config_record(self.run_dir, device=describe(self.device), device_type=self.device.type,
                             precision=str(self.amp_dtype or torch.float32).replace("torch.", ""),
                             channels_last=self.channels_last, classes=self.classes, preprocess=self.preprocess)

    def _load_data(self) -> None:
        cfg = self.config
        train_set = load_dataset(cfg.dataset_dir)
        self.classes = list(train_set.classes)
        self.paths = train_set.paths()
        labels = train_set.labels()
        if cfg.val_dataset_dir:
            val_set = load_dataset(cfg.val_dataset_dir)
            unknown = sorted(set(val_set.classes) - set(self.classes))
            if unknown:
                raise ValueError(f"the validation set has classes the training set lacks: {', '.join(unknown)}")
            self.train_idx = list(range(len(labels)))
            self.val_idx = list(range(len(labels), len(labels) + len(val_set.items)))
            self.validation = "separate validation set"
            self.paths = self.paths + val_set.paths()
            labels = labels + [self.classes.index(val_set.classes[k]) for k in val_set.labels()]
        else:
            self.train_idx, self.val_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
            self.validation = f"{cfg.val_fraction:.0%} held out"
        self.labels = torch.tensor(labels, dtype=torch.long)

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict:
        self.t0 = time.time()
        self.prepare()
        cfg = self.config
        head_only = self.trainable == {self.head_name}
        loop_needed = not (head_only and cfg.augment == "none")
        probe_epochs = (PROBE_EPOCHS_BEFORE_FINETUNE if cfg.probe_first else 0) if loop_needed else cfg.epochs
        if not loop_needed and not cfg.val_dataset_dir:
            self._use_cross_validation()
        counts = layers.apply_freeze(self.model, self.groups, self.trainable, cfg.bn_policy)
        self.counts = counts
        update_config_record(self.run_dir, n_train=len(self.train_idx), n_val=len(self.val_idx),
                             validation=self.validation)
        self.emit("fit_start", epochs=(probe_epochs + (cfg.epochs if loop_needed else 0)),
                  probe_epochs=probe_epochs, n_train=len(self.train_idx), n_val=len(self.val_idx),
                  validation=self.validation, elapsed=time.time() - self.t0,
                  classes=self.classes, device=describe(self.device), image_size=self.size,
                  trainable_params=counts["trainable_params"], total_params=counts["total_params"],
                  trainable_groups=counts["trainable_groups"])
        if probe_epochs:
            self.probe(probe_epochs)
        if loop_needed:
            self.finetune(cfg.epochs)
        metrics = self.save_outputs()
        if not metrics:
            raise TrainingDiverged("training became unstable before its first epoch ended, twice: "
                                   "lower the learning rate, or train fewer layers")
        self.emit("fit_end", val_acc=metrics["val_acc"], val_loss=metrics["val_loss"],
                  best_epoch=metrics["best_epoch"], wall_s=metrics["wall_s"])
        return metrics

    def _start_phase(self, phase: str, epochs: int, **info) -> None:
        self.stop_phase = False
        message = info.pop("message")
        self.emit("phase_start", phase=phase, epochs=epochs, epoch=self.epoch, **info)
        self.emit("notice", phase=phase, message=message, epochs=epochs)

    # ---- phase 1: the head on frozen features -------------------------------------------
    def _use_cross_validation(self) -> None:
        """Head-only runs fit in milliseconds on cached features, so every image can serve both ways:
        k-fold cross-validation gives each image an out-of-fold prediction, and the head that is kept
        is fitted on all images."""
        labels = self.labels.tolist()
        k = min(CV_FOLDS, min(labels.count(c) for c in set(labels)))
        self.folds = stratified_folds(labels, k, self.config.seed)
        self.train_idx = self.val_idx = list(range(len(labels)))
        self.validation = f"{k}-fold cross-validation (out-of-fold predictions)"

    def probe(self, epochs: int) -> None:
        """Fit the head as a logistic regression on standardised frozen features.

        Each epoch is one step down a regularisation path, from strong to weak L2, warm-started from
        the step before: validation (early stopping, best checkpoint) picks how much regularisation
        this data set needs, instead of one fixed guess.
        """
        self._start_phase("probe", epochs, message="fitting the new head on the backbone's frozen features")
        # The probe's matrices are small: on the CPU they skip thousands of tiny kernel launches and
        # the start-up of CUDA's solver library (seconds on an H100, for a fit that takes 0.3 s here).
        feats = self._frozen_features().float().cpu()
        n = len(self.paths)
        if self.folds:  # one fit per fold (validated on that fold), then the kept one on every image
            train_masks = torch.ones(len(self.folds) + 1, n, dtype=torch.bool)
            for f, fold in enumerate(self.folds):
                train_masks[f, fold] = False
            val_sets = [torch.tensor(fold) for fold in self.folds]
        else:
            train_masks = torch.zeros(1, n, dtype=torch.bool)
            train_masks[0, self.train_idx] = True
            val_sets = [torch.tensor(self.val_idx)]
        fits = _HeadFits(feats, self.labels.cpu(), train_masks, len(self.classes))
        with _one_thread():
            self._walk_l2_path(fits, val_sets, epochs)

    def _walk_l2_path(self, fits: "_HeadFits", val_sets: list[torch.Tensor], epochs: int) -> None:
        head = self.model.get_classifier()
        for k in range(epochs):
            t_epoch = time.time()
            l2 = PROBE_L2_START * PROBE_L2_STEP ** k
            fits.step(l2, self.config.label_smoothing)
            fits.copy_to(head)
            with torch.no_grad():
                log_probs = fits.logits().log_softmax(-1)  # fits × images × classes
                val_log_probs = torch.zeros(len(self.paths), len(self.classes))
                for f, val in enumerate(val_sets):  # fit f is validated on the images it did not see
                    val_log_probs[val] = log_probs[f, val]
                val_log_probs = val_log_probs[self.val_idx]
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
            if self.stop_phase:
                break

    @torch.no_grad()  # not inference_mode: the probe's backward needs these as ordinary tensors
    def _frozen_features(self) -> torch.Tensor:
        """Pooled backbone features of every image, computed once and cached on disk by backbone,
        weights, preprocessing and images."""
        cache = workspace_root() / "cache" / "features" / f"{self._feature_key()}.npy"
        if cache.exists():
            self.emit("notice", message="reusing frozen features computed by an earlier run")
            self.features = torch.from_numpy(np.load(cache)).to(self.device)
            return self.features
        self.model.eval()
        chunks = []
        n = len(self.paths)
        for start in range(0, n, self.config.batch_size):
            x = self._to_device(self.pixels[start:start + self.config.batch_size])
            # fp32, not autocast: computed once, and bf16 features cost the probe accuracy
            # (Fashion-MNIST on an H100: 78.8 % test with bf16 features, 80.6 % with fp32 on a CPU).
            chunks.append(self.model.forward_head(self.model.forward_features(x), pre_logits=True).float())
            self.emit("batch_end", phase="features", epoch=0, batch=start // self.config.batch_size,
                      done=min(start + self.config.batch_size, n), total=n)
        self.features = torch.cat(chunks)
        with atomic_file(cache) as f:
            np.save(f, self.features.cpu().numpy())
        return self.features

    def _feature_key(self) -> str:
        cfg = self.config
        weights = cfg.weights
        if os.path.isfile(weights):
            stat = os.stat(weights)
            weights = f"{os.path.abspath(weights)}:{stat.st_size}:{stat.st_mtime_ns}"
        parts = [cfg.backbone, weights, repr(sorted(self.preprocess.items())), *map(str, self.paths)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]

    # ---- phase 2: fine-tune on images ------------------------------------------------------
    def finetune(self, epochs: int) -> None:
        """Train the chosen groups on images; if the loss diverges, restart once from the weights the
        phase began with (the probe's) at a lower learning rate, and say so."""
        names = [g.name for g in self.groups if g.name in self.trainable]
        self._cache_frozen_prefix()
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

    def _reference_loss(self) -> float | None:
        """The probe's training loss, which a healthy fine-tune starts from; None without a probe."""
        if self.features is None:
            return None
        with torch.no_grad():
            logits = self.model.get_classifier()(self.features[self.train_idx].float())
            return F.cross_entropy(logits, self.labels[self.train_idx]).item()

    def _finetune_epochs(self, epochs: int, lr_scale: float) -> None:
        cfg = self.config
        optimizer = torch.optim.AdamW(self._param_groups(lr_scale), weight_decay=cfg.weight_decay)
        batch_size = self._batch_size_that_fits(optimizer)
        n_train = len(self.train_idx)
        drop_last = n_train % batch_size == 1 and n_train > 1  # BatchNorm cannot train on a batch of one
        steps_per_epoch = n_train // batch_size if drop_last else math.ceil(n_train / batch_size)
        scheduler = _schedule(optimizer, cfg, steps_per_epoch, epochs)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        augment = make_augment(cfg.augment, self.size)
        generator = torch.Generator().manual_seed(cfg.seed)
        train_idx = torch.tensor(self.train_idx)
        for _ in range(epochs):
            self.epoch += 1
            t_epoch = time.time()
            layers.set_train_mode(self.model, cfg.bn_policy)
            order = train_idx[torch.randperm(n_train, generator=generator)]
            total_loss = total_correct = seen = 0
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                y = self.labels[idx]
                with self._autocast():
                    logits = self._forward(idx, augment)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                self.step += 1
                # Logged without label smoothing, like the probe's and the validation loss, so the curves compare.
                batch_loss = F.cross_entropy(logits.detach().float(), y).item()
                total_loss += batch_loss * len(idx)
                total_correct += (logits.argmax(1) == y).sum()  # stays on the device: no extra sync
                seen += len(idx)
                self.emit("batch_end", phase="finetune", epoch=self.epoch, step=self.step, batch=b + 1,
                          batches=steps_per_epoch, loss=batch_loss, lr=optimizer.param_groups[-1]["lr"],
                          images_per_s=seen / max(time.time() - t_epoch, 1e-9))
            train_seconds = time.time() - t_epoch
            val_loss, val_acc = self._evaluate(self.val_idx)
            seconds = time.time() - t_epoch
            self.emit("epoch_end", phase="finetune", epoch=self.epoch, step=self.step,
                      train_loss=total_loss / seen, train_acc=int(total_correct) / seen,
                      val_loss=val_loss, val_acc=val_acc, seconds=seconds, train_seconds=train_seconds,
                      elapsed=time.time() - self.t0, images_per_s=seen / train_seconds)
            if self.stop_phase:
                break

    def _forward(self, idx, augment=None) -> torch.Tensor:
        """Logits of the images `idx`: from cached prefix activations when there are, else from pixels."""
        if self.split is not None:
            with self.split.rest() as rest:
                return rest(self.activations[idx])
        images = self.pixels[idx]
        if augment is not None:
            images = augment(images)
        return self.model(self._to_device(images))

    @torch.no_grad()
    def _cache_frozen_prefix(self) -> None:
        """With no augmentation, frozen BatchNorm and a stage-shaped frozen prefix, run that prefix once."""
        cfg = self.config
        k = stage_split_point(self.model, self.groups, self.trainable)
        if k is None or cfg.augment != "none" or cfg.bn_policy == "train":
            return
        split = PrefixSplit(self.model, k)
        self.model.eval()
        chunks, size = [], 0
        for start in range(0, len(self.paths), cfg.batch_size):
            with self._autocast():
                chunk = split.prefix(self._to_device(self.pixels[start:start + cfg.batch_size]))
            chunks.append(chunk)
            size += chunk.numel() * chunk.element_size()
            if size > ACTIVATION_CACHE_LIMIT:
                return
        self.activations = torch.cat(chunks)
        self.split = split
        self.emit("notice", message=f"the frozen layers run once: {len(self.paths)} images' activations after "
                                    f"stage {k} cached ({size / 2**20:.0f} MiB)")

    def _param_groups(self, lr_scale: float = 1.0) -> list[dict]:
        """One optimizer group per trainable layer group, the learning rate lower the further from the head."""
        params = dict(self.model.named_parameters())
        head_index = self.groups[-1].index
        groups = []
        for group in self.groups:
            if group.name not in self.trainable:
                continue
            scale = lr_scale * LAYER_LR_DECAY ** (head_index - group.index)
            decay = [params[n] for n in group.param_names if params[n].ndim > 1]
            no_decay = [params[n] for n in group.param_names if params[n].ndim <= 1]
            groups.append({"params": decay, "lr": self.config.lr * scale, "name": group.name})
            # Norm scales and biases are not weights to shrink.
            groups.append({"params": no_decay, "lr": self.config.lr * scale, "weight_decay": 0.0,
                           "name": group.name + ".no_decay"})
        return [g for g in groups if g["params"]]

    def _batch_size_that_fits(self, optimizer) -> int:
        """On CUDA, halve the batch size until a forward+backward fits in memory, and say so."""
        batch_size = min(self.config.batch_size, len(self.train_idx))
        if self.device.type != "cuda":
            return batch_size
        while True:
            try:
                layers.set_train_mode(self.model, self.config.bn_policy)
                idx = torch.tensor(self.train_idx[:batch_size])
                with self._autocast():
                    loss = self._forward(idx).float().mean()
                loss.backward()
                optimizer.zero_grad(set_to_none=True)
                return batch_size
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                if batch_size == 1:
                    raise
                self.emit("notice", message=f"batch size {batch_size} does not fit in GPU memory; "
                                            f"using {batch_size // 2}")
                batch_size //= 2

    # ---- evaluation and outputs -------------------------------------------------------------
    @torch.inference_mode()
    def predict_probs(self, idx: list[int]) -> torch.Tensor:
        """Class probabilities of the images `idx`, in eval mode; from cached features while the body is untouched."""
        self.model.eval()
        if self.features is not None and not self._body_trained():
            return self.model.get_classifier()(self.features[idx]).float().softmax(1).cpu()
        out = []
        for start in range(0, len(idx), self.config.batch_size):
            with self._autocast():
                out.append(self._forward(idx[start:start + self.config.batch_size]).float().softmax(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def _evaluate(self, idx: list[int]) -> tuple[float, float]:
        probs = self.predict_probs(idx)
        return _loss_acc(probs.clamp_min(1e-12).log(), self.labels[idx], log_probs=True)

    def _body_trained(self) -> bool:
        return self.trainable != {self.head_name} or self.config.augment != "none"

    def save_outputs(self) -> dict:
        """Best weights, labels, preprocessing, predictions on validation and the final metrics."""
        if self.model is None or not hasattr(self, "groups"):
            return {}
        best = next((c for c in self.callbacks if isinstance(c, BestCheckpoint)), None)
        if best is None or best.best_state is None:
            return {}
        # The checkpoint holds only what training can change; the frozen rest is still in the model.
        unexpected = self.model.load_state_dict(best.best_state, strict=False).unexpected_keys
        assert not unexpected, f"checkpoint keys the model lacks: {unexpected[:3]}"
        _save_weights(self.model, self.run_dir / "model.safetensors")
        atomic_write_json(self.run_dir / "labels.json", {"classes": self.classes})
        atomic_write_json(self.run_dir / "preprocess.json", {
            "backbone": backbones.architecture(self.model), "num_classes": len(self.classes), **self.preprocess})
        probs = self.val_probs_at.get(best.best_epoch)
        if probs is None:
            probs = self.predict_probs(self.val_idx)
        y_val = self.labels[self.val_idx].cpu()
        confidence, predicted = probs.max(1)
        _write_predictions(self.run_dir / "predictions.csv", [self.paths[i] for i in self.val_idx],
                           [self.classes[k] for k in y_val], [self.classes[k] for k in predicted],
                           confidence.tolist())
        wall = time.time() - self.t0
        val_loss, _ = _loss_acc(probs.clamp_min(1e-12).log(), y_val, log_probs=True)
        metrics = classification_metrics(y_val.tolist(), predicted.tolist(), self.classes)
        metrics = {"val_acc": metrics.pop("accuracy"), "val_loss": val_loss, **metrics,
                   "best_epoch": best.best_epoch, "epochs_run": self.epoch, "wall_s": round(wall, 2),
                   "images_per_s": round(len(self.train_idx) * self.epoch / wall, 1),
                   "n_train": len(self.train_idx), "n_val": len(self.val_idx), "validation": self.validation,
                   "device": describe(self.device), **getattr(self, "counts", {}),
                   "kept": self._kept_weights(best)}
        if self.device.type == "cuda":
            metrics["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        return metrics

    def _kept_weights(self, best: BestCheckpoint) -> dict:
        """Which weights the saved model holds, in facts and in words: the probe's when fine-tuning
        never beat it on validation, whatever the run's plan was."""
        head = next(g for g in self.groups if g.name == self.head_name)
        from_probe = best.best_phase == "probe"
        kept = {"phase": best.best_phase, "epoch": best.best_epoch,
                "plan": "head" if from_probe else self.config.freeze,
                "trainable_params": head.num_params if from_probe else self.counts["trainable_params"],
                "reason": ""}
        tuned = best.best_of_phase.get("finetune")
        if from_probe and self.trainable != {self.head_name}:
            probe = best.best_of_phase["probe"]
            kept["reason"] = (
                f"fine-tuning never beat the probe on validation (its best: {tuned['val_acc']:.1%} at epoch "
                f"{tuned['epoch']}, against {probe['val_acc']:.1%}), so the model kept is the probe's: only the "
                f"head learnt" if tuned else "fine-tuning ended before its first epoch, so the model kept is the "
                                            "probe's: only the head learnt")
        return kept

    # ---- small helpers ------------------------------------------------------------------------
    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu" and self.device.type == "cuda":
            images = images.pin_memory()
        x = normalize(images.to(self.device, non_blocking=True), self.preprocess["mean"], self.preprocess["std"])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@contextmanager
def _one_thread():
    """Tiny matrices gain nothing from threads, and OpenMP threads that spin on a busy CPU made
    the probe 7x slower (measured: 2 threads 6.8 s, 1 thread 1.0 s, on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _HeadFits:
    """Logistic-regression heads on standardised features, one per training set in `train_masks`
    (fits × images), fitted side by side: their objectives are independent, so their sum is one
    convex problem and one L-BFGS drives them all, with one set of per-step overheads, not one per fit.

    With fewer images than features, each fit works in the orthonormal basis of its training rows
    (from an SVD): the L2-regularised solution lies in that span, and the basis keeps the L2 norm, so
    the problem is the same, only smaller (200 × 1280 features → 200 × 200).
    """

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, train_masks: torch.Tensor, num_classes: int):
        weights = train_masks.float()
        count = weights.sum(1, keepdim=True)
        self.mean = weights @ feats / count
        variance = (weights @ feats.pow(2) / count - self.mean.pow(2)).clamp_min(0) * count / (count - 1).clamp_min(1)
        std = variance.sqrt()
        # A feature that barely varies on the training images would get a weight of w/std on raw
        # features: the head would amplify any later drift of that feature (fine-tuning, a new camera).
        self.std = std.clamp_min(PROBE_STD_FLOOR * std.median(1, keepdim=True).values + 1e-6)
        x = (feats[None] - self.mean[:, None]) / self.std[:, None]  # fits × images × features
        self.basis = _row_space_bases(x, train_masks)  # fits × features × rank, or None
        self.x = x @ self.basis if self.basis is not None else x
        self.y = labels
        self.train_masks = train_masks
        self.sample_weights = weights / count  # each fit's loss is the mean over its own training images
        fits, dim = self.x.shape[0], self.x.shape[2]
        self.weight = torch.zeros(fits, dim, num_classes, device=feats.device, requires_grad=True)
        self.bias = torch.zeros(fits, 1, num_classes, device=feats.device, requires_grad=True)
        self.optimizer = torch.optim.LBFGS([self.weight, self.bias], lr=1, max_iter=PROBE_ITERS_PER_EPOCH,
                                           history_size=20, line_search_fn="strong_wolfe")

    def logits(self) -> torch.Tensor:
        return torch.baddbmm(self.bias, self.x, self.weight)

    def step(self, l2: float, label_smoothing: float) -> None:
        """Continue every fit (warm start) at penalty `l2`."""
        y = self.y.expand(len(self.x), -1)

        def closure():
            self.optimizer.zero_grad()
            losses = F.cross_entropy(self.logits().transpose(1, 2), y, label_smoothing=label_smoothing,
                                     reduction="none")
            loss = (losses * self.sample_weights).sum() + l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            self.optimizer.step(closure)

    @torch.no_grad()
    def copy_to(self, head: torch.nn.Linear, fit: int = -1) -> None:
        """Fold fit's basis and standardisation into a plain Linear on raw features:
        W = basis·B, then W' = W/std and b' = b - (mean/std)·W."""
        weight = self.weight[fit] if self.basis is None else self.basis[fit] @ self.weight[fit]
        mean, std = self.mean[fit], self.std[fit]
        head.weight.copy_((weight / std[:, None]).T)
        head.bias.copy_(self.bias[fit, 0] - (mean / std) @ weight)


def _row_space_bases(x: torch.Tensor, train_masks: torch.Tensor) -> torch.Tensor | None:
    """Per fit, an orthonormal basis (features × rank) of its training rows; None when that saves nothing."""
    fits, n, dim = x.shape
    rank = int(train_masks.sum(1).max())
    if rank >= dim:
        return None
    bases = torch.zeros(fits, dim, rank, device=x.device)
    for f in range(fits):
        _, _, vh = torch.linalg.svd(x[f][train_masks[f]], full_matrices=False)
        bases[f, :, :vh.shape[0]] = vh.T  # a fit with fewer rows leaves zero columns: they stay at zero weight
    return bases


def _loss_acc(logits: torch.Tensor, y: torch.Tensor, log_probs: bool = False) -> tuple[float, float]:
    y = y.to(logits.device)
    loss = F.nll_loss(logits, y) if log_probs else F.cross_entropy(logits, y)
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def _schedule(optimizer, cfg: RunConfig, steps_per_epoch: int, epochs: int):
    total = max(steps_per_epoch * epochs, 1)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=min(max(cfg.warmup_epochs / epochs, 0.05), 0.5))
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _channels_last_helps(backbone: str, device: torch.device, image_passes: int) -> bool:
    """Whether channels-last memory pays, by measurement.

    CPU: convnets gain (Lite0 on 2 cores: 27 → 36 images/s forward), ConvNeXt's LayerNorm loses.
    CUDA: the first channels-last pass of a fresh process costs ~3 s of kernel start-up on an H100
    (NCHW: 0.4 s) for ~0.01 s saved per 224 images afterwards, so it pays only on long runs.
    ViTs have no convolutions to gain from it.
    """
    if any(k in backbone for k in ("vit", "deit", "swin", "eva", "beit", "levit")):
        return False
    if device.type == "cuda":
        return image_passes >= CUDA_CHANNELS_LAST_MIN_PASSES
    return device.type == "cpu" and "convnext" not in backbone


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def _write_predictions(path: Path, paths, labels, predicted, confidence) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "predicted", "confidence"])
    for row in zip(paths, labels, predicted, confidence):
        writer.writerow([str(row[0]), row[1], row[2], f"{row[3]:.6f}"])
    atomic_write_bytes(path, buffer.getvalue().encode())

