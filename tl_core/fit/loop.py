"""The fit loop: from a run folder's RunConfig to a trained model and every file of the run contract.

Two phases, announced through a closed list of events (callbacks.EVENTS) that callbacks listen to:
- "probe" (tl_core.fit.probe_phase): the frozen backbone's features are computed once and the new head
  is fitted on them with L-BFGS. With the head as the only trainable group and no augmentation this is
  the whole run.
- "finetune" (tl_core.fit.finetune): the chosen groups train on images with AdamW, lower learning rates
  for earlier groups, warm-up then cosine (or one-cycle); restarted once at a lower rate if it diverges.
The state is three objects (tl_core.fit.state): the Net (model and groups), the batch Sources, the
Progress. The seams: a Task computes the loss of a batch (tl_core.fit.tasks), a batch source feeds
pixels, cached prefix activations or cached features (tl_core.fit.batches), a Strategy owns the device,
backward and step (tl_core.fit.strategy). The best epoch of either phase is kept (BestCheckpoint
restores it on "before_save"), and tl_core.fit.outputs writes what the run folder promises. When a
fine-tune's probe is kept, its head is refitted on every image as a head-only run fits it
(Fit.refit_kept_probe): a fine-tune run never keeps less than feature extraction would.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import PROBE_EPOCHS_BEFORE_FINETUNE, RunConfig
from ..data.augment import make_augment
from ..data.datasets import decode_images
from ..models.devices import describe
from ..ops.runs import record_facts
from ..ops.storage import workspace_root
from . import batches, finetune, probe_phase
from .callbacks import (EVENTS, BestCheckpoint, CancelFit, DivergenceGuard, EarlyStopping, NanGuard,
                        TrainingDiverged)
from .imbalance import class_weighting
from .outputs import save_outputs
from .run_data import RunData, load_run_data, with_cross_validation
from .state import Net, Progress, Sources
from .strategy import SingleDevice, channels_last_helps
from .tasks import Classification, Task

PIXELS_ON_GPU_LIMIT = 2 << 30  # bytes of uint8 images kept on the GPU for the whole run
# A fine-tune batch whose loss exceeds max(DIVERGED_OVER_CHANCE × ln(classes), DIVERGED_OVER_PROBE × the
# probe's training loss) has lost what the probe knew: the phase restarts from the probe's weights once, at
# RESTART_LR_FACTOR × the learning rate.
DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE, RESTART_LR_FACTOR = 2.0, 4.0, finetune.RESTART_LR_FACTOR


def standard_callbacks(config: RunConfig) -> list:
    """The loop's own listeners, in order: divergence and NaN guards, the best checkpoint, early stopping."""
    return [DivergenceGuard(DIVERGED_OVER_CHANCE, DIVERGED_OVER_PROBE), NanGuard(), BestCheckpoint(),
            EarlyStopping(config.early_stopping)]


class Fit:
    """One training run; `emit` tells every callback what happened.

    Its state: `data` (the run's images and how they validate) with `labels` on the device, `net`
    (tl_core.fit.state.Net), `sources` (Sources), `progress` (Progress). What listeners set: `best`
    (BestCheckpoint's record), `stop_phase` (end the phase after this epoch), `skip_step` (on
    "before_step": skip this optimiser step), `extra_metrics` (added to metrics.json).
    """

    def __init__(self, config: RunConfig, run_dir: Path, callbacks: list, task: Task | None = None, strategy=None):
        self.config, self.run_dir, self.callbacks = config, Path(run_dir), callbacks
        self.task = task or Classification(config.label_smoothing)
        self.strategy = strategy or SingleDevice(config.device)  # distributed.FabricDDP for several processes
        self.device = self.strategy.device
        self.progress = Progress()
        self.data: RunData | None = None
        self.labels: torch.Tensor | None = None
        self.net: Net | None = None  # from prepare() on
        self.sources: Sources | None = None
        self.best, self.stop_phase, self.skip_step, self.extra_metrics = None, False, False, {}
        self.held_out_n_val = None  # validation images that judged fine-tuning, when the probe was refitted after
        self.probe_bar = None  # the default's cross-validated probe on the held-out images (set_probe_bar)
        self.class_weights, self.class_weighting = None, {}  # per-class loss weights (CPU), and why (imbalance)

    # ---- what listeners and outputs read ------------------------------------------------
    model = property(lambda self: self.net.model if self.net else None, doc="the model being trained")
    classes = property(lambda self: self.data.classes if self.data else [])
    paths = property(lambda self: self.data.paths if self.data else [])
    train_idx = property(lambda self: self.data.train_idx if self.data else [])
    val_idx = property(lambda self: self.data.val_idx if self.data else [])
    validation = property(lambda self: self.data.validation if self.data else "", doc="in words")
    validation_method = property(lambda self: self.data.validation_method if self.data else {})
    trains_on_images = property(lambda self: self.net.trains_on_images(self.config))

    def emit(self, event: str, **info) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: the loop announces only {', '.join(EVENTS)}")
        for callback in self.callbacks:
            callback(event, info, self)

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """The images and their labels, the model with its plan, the decoded pixels as a batch source."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self._use(self._load_data())
        self.net = net = Net.build(cfg, len(self.classes))
        preprocess = net.preprocess
        pixels = decode_images(self.paths, net.size, preprocess["crop_pct"], preprocess["interpolation"],
                               cache_dir=workspace_root() / "cache" / "pixels")
        if self.device.type == "cuda" and pixels.numel() < PIXELS_ON_GPU_LIMIT:
            pixels = pixels.to(self.device)  # small sets: no host→device copy per batch
        net.model.to(self.device)
        for module in self.task.modules():
            module.to(self.device)
        net.channels_last = channels_last_helps(cfg.backbone, self.device, len(self.paths) * cfg.epochs)
        if net.channels_last:
            net.model.to(memory_format=torch.channels_last)
            # Stored that way once, each batch normalises straight into the layout the convolutions want.
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        self.sources = Sources(batches.PixelSource(net.model, pixels, self.labels,
                                                   batches.normalizer(preprocess, self.device, net.channels_last),
                                                   make_augment(cfg.augment, net.size)))
        record_facts(self.run_dir, device=describe(self.device), device_type=self.device.type,
                     precision=str(self.strategy.amp_dtype or torch.float32).replace("torch.", ""),
                     channels_last=net.channels_last, classes=self.classes, preprocess=preprocess,
                     features=net.feature_kind)

    def _load_data(self) -> RunData:
        return load_run_data(self.config)

    def _use(self, data: RunData) -> None:
        self.data = data
        self.labels = torch.tensor(data.labels, dtype=torch.long, device=self.device)

    def use_last_layer(self, num_outputs: int) -> None:
        """Read the last layer's features only: the plain model with a fresh head, the sources following it."""
        self.net.to_last_layer(num_outputs, self.config, self.device)
        self.sources.pixels.model = self.net.model
        features = self.sources.features.features_all[:, -self.net.model.num_features:]
        self.sources.features = batches.FeatureSource(features, self.labels)

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict:
        self.prepare()
        cfg, net = self.config, self.net
        probe_epochs = (PROBE_EPOCHS_BEFORE_FINETUNE if cfg.probe_first else 0) if self.trains_on_images else cfg.epochs
        if not self.trains_on_images and not cfg.val_dataset_dir:
            self._use(with_cross_validation(self.data, cfg.seed))
        counts = net.freeze(cfg.bn_policy)
        record_facts(self.run_dir, n_train=len(self.train_idx), n_val=len(self.val_idx), validation=self.validation)
        self.emit("fit_start", epochs=(probe_epochs + (cfg.epochs if self.trains_on_images else 0)),
                  probe_epochs=probe_epochs, n_train=len(self.train_idx), n_val=len(self.val_idx),
                  validation=self.validation, validation_method=self.validation_method,
                  elapsed=self.progress.elapsed(), classes=self.classes, device=describe(self.device),
                  image_size=net.size, trainable_params=counts["trainable_params"],
                  total_params=counts["total_params"], trainable_groups=counts["trainable_groups"])
        self._weigh_classes()
        if probe_epochs:
            self.probe(probe_epochs)
        if self.trains_on_images:
            self.set_probe_bar()
            finetune.run(self, cfg.epochs)
            self.refit_kept_probe()
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

    def probe(self, epochs: int) -> None:
        """The head on the frozen features (tl_core.fit.probe_phase); a multi-task fit fits a head per task."""
        probe_phase.run(self, epochs)

    # A fine-tune run whose probe is kept refits it as a head-only run fits its head: this many steps of the L2
    # path (RunConfig's default epochs), cross-validated on every image.
    REFIT_PROBE_EPOCHS = 10
    refits_kept_probe = True  # a subclass whose probe is not this loop's (several heads) says False

    def set_probe_bar(self) -> None:
        """What a fine-tune must beat (BestCheckpoint): besides the probe fitted on the training split, the probe
        feature extraction would keep, scored out of fold on the same held-out images. Measured on the fine-tune
        plans of Fashion-MNIST at 20 a class, a fine-tune that beat the first by more than the noise still lost
        2.8 points of test accuracy against the default, whose head is fitted on every image."""
        if (not (self.refits_kept_probe and self.task.may_keep_probe) or self.sources.features is None
                or self.config.val_dataset_dir
                or self.data.folds or self.best is None or self.best["phase"] != "probe"):
            return
        self.probe_bar = probe_phase.cross_validated_accuracy(self, list(self.val_idx), self.REFIT_PROBE_EPOCHS)
        if self.probe_bar is not None:
            record_facts(self.run_dir, probe_bar=self.probe_bar)
            self.emit("notice", phase="finetune", kind="probe_bar", message=(
                f"fine-tuning must beat {self.probe_bar:.1%} on the {len(self.val_idx)} held-out images (what "
                f"feature extraction's head, fitted on every image, scores on them out of fold) by more than "
                f"the noise, or the run keeps that head"))

    def refit_kept_probe(self) -> None:
        """When fine-tuning did not beat the probe, keep the probe that feature extraction would keep on the
        same images: its weights back, then the head refitted by cross-validation on every image (the held-out
        images were needed only to judge fine-tuning). Issue 24: the held-out probe, fitted on 80 % of the
        images, cost 1-4 points against the default at 5-20 images a class."""
        keeper = next((c for c in self.callbacks if isinstance(c, BestCheckpoint)), None)
        if (not (self.refits_kept_probe and self.task.may_keep_probe) or keeper is None or self.best is None
                or self.best["phase"] != "probe"
                or self.config.val_dataset_dir or self.sources.features is None or self.data.folds):
            return
        self.held_out_n_val = len(self.val_idx)
        keeper.refit(self)
        self._use(with_cross_validation(self.data, self.config.seed))
        record_facts(self.run_dir, n_train=len(self.train_idx), n_val=len(self.val_idx), validation=self.validation)
        probe_phase.run(self, self.REFIT_PROBE_EPOCHS, reuse_features=True, message=(
            f"fine-tuning did not beat the probe: refitting the head on all {len(self.paths)} images "
            f"({self.validation}), as feature extraction does"))

    def save(self) -> dict:
        """Restore the best weights (BestCheckpoint listens to "before_save") and write the run's outputs."""
        if self.net is None:
            return {}
        self.emit("before_save")
        return save_outputs(self) if self.best is not None else {}

    def start_phase(self, phase: str, epochs: int, **info) -> None:
        """Announce a phase (and in words, its `message`); listeners reset what they keep per phase."""
        self.stop_phase = False
        self.progress.phase = phase
        message = info.pop("message")
        self.emit("phase_start", phase=phase, epochs=epochs, epoch=self.progress.epoch, **info)
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

    def reference_loss(self) -> float | None:
        """The probe's training loss, which a healthy fine-tune starts from; None without a probe."""
        features = self.sources.features
        if features is None:
            return None
        with torch.no_grad():
            logits = self.net.head()(features.features_all[self.train_idx].float())
            return torch.nn.functional.cross_entropy(logits, self.labels[self.train_idx]).item()

    # ---- evaluation ------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_probs(self, idx: list[int]) -> torch.Tensor:
        """Class probabilities of the images `idx`, in eval mode; from cached features while the body is untouched."""
        self.net.model.eval()
        head = self.net.head()
        source = self.sources.for_prediction(self.trains_on_images)
        out = []
        for start in range(0, len(idx), self.config.batch_size):
            batch = source.batch(torch.tensor(idx[start:start + self.config.batch_size]))
            # Frozen features stay fp32: the probe fitted the head on them so.
            with nullcontext() if source is self.sources.features else self.strategy.autocast():
                out.append(self._probabilities(head(source.features(batch.inputs))).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def evaluate(self, idx: list[int]) -> tuple[float, float]:
        """(validation loss, accuracy) of the images `idx`; a multi-task fit: (its loss, the tasks' mean score)."""
        probs = self.predict_probs(idx)
        return probe_phase.loss_acc(probs.clamp_min(1e-12).log(), self.labels[idx], log_probs=True)

    def epoch_details(self) -> dict:
        """More of a fine-tune epoch_end event, from the last validation (a multi-task fit's per-task scores)."""
        return {}

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)
