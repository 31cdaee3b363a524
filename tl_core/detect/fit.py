"""The detect kind's fit(config, run_dir, emit, strategy): one readable training loop for the detector.

Top to bottom: load the box dataset once at the input size and hold out validation pictures; choose the
layers that train (measured when freeze="auto"); train with AdamW under a warm-up + cosine schedule, AMP on
CUDA; after each epoch measure validation mAP@50 and keep the best epoch's weights; write the run's outputs.
Events go out through `emit` (the closed list of tl_core.fit.callbacks.EVENTS); the STOP file answers there as
CancelFit. A loss that blows up restarts training once from the first weights at a tenth of the rate, as the
classifier's loop does, and fails with advice the second time.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import safetensors.torch
import torch

from tl_core.models import layers
from tl_core.models.backbones import architecture
from tl_core.fit.callbacks import CancelFit, TrainingDiverged
from tl_core.models.devices import autocast_dtype, describe, pick_device
from tl_core.detect import augment, batches
from tl_core.detect.evaluate import box_metrics, map_scores
from tl_core.detect.formats import load_boxset
from tl_core.detect.kind import AUTO_CANDIDATES, AUTO_EPOCHS, AUTO_MARGIN, AUTO_RULE, DEFAULT_IMAGE_SIZE
from tl_core.detect.model import build, frozen_body_outputs, given_stages, layer_groups
from tl_core.ops.runs import RunFolder, record_facts, stop_requested
from tl_core.ops.storage import atomic_write_bytes, atomic_write_json

HEAD_LR = 1e-3  # the new pyramid and detection head; trained backbone layers take BACKBONE_LR_RATIO of it
BACKBONE_LR_RATIO = 0.1
DIVERGED_OVER_START = 10.0  # a batch loss this many times the first batches' is a blow-up, not noise
GRAD_CLIP = 10.0


class _Diverged(Exception):
    pass


def fit(config, run_dir, emit, strategy=None) -> dict:
    """Train the detection run in `run_dir` (see the module doc); the metrics written to metrics.json."""
    if strategy is not None:
        raise ValueError("detection trains on one device for now: run it without torchrun")
    run_dir, t0 = Path(run_dir), time.time()
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    boxset = load_boxset(config.dataset_dir)
    size = config.image_size or DEFAULT_IMAGE_SIZE
    train_idx, val_idx = batches.split(len(boxset.images), config.val_fraction, config.seed)
    train, val = batches.load(boxset, size, train_idx), batches.load(boxset, size, val_idx)
    for skipped in train.skipped + val.skipped:
        emit("notice", message=f"{skipped['name']}: skipped ({skipped['reason']})")
    if len(train.pixels) == 0 or len(val.pixels) == 0:
        raise ValueError(f"{config.dataset_dir}: too few readable pictures to train and validate")
    if not any(len(target["labels"]) for target in train.targets):
        raise ValueError(f"{config.dataset_dir}: no usable box among the training pictures: draw or import boxes "
                         "first (the audit lists the ones that cannot be used)")
    freeze, plan = config.freeze, None
    if freeze == "auto":
        freeze, plan = auto_plan(config, run_dir, emit, train, val, boxset.classes, size, device)
    model = build(config.backbone, len(boxset.classes), config.weights, size)
    groups = layer_groups(model)
    counts = layers.apply_freeze(model, groups, layers.parse_freeze(freeze, groups), config.bn_policy)
    model.to(device)
    record_facts(run_dir, device=describe(device), n_train=len(train.pixels), n_val=len(val.pixels), freeze=freeze,
                 image_size=size, classes=boxset.classes)
    emit("fit_start", epochs=config.epochs, n_train=len(train.pixels), n_val=len(val.pixels),
         validation=f"{len(val.pixels)} pictures held out", validation_method={"kind": "holdout"},
         classes=boxset.classes, device=describe(device), image_size=size, freeze=freeze,
         trainable_params=counts["trainable_params"], total_params=counts["total_params"],
         trainable_groups=counts["trainable_groups"], elapsed=time.time() - t0)
    loop = Loop(model, config, device, train, val, boxset.classes, emit, run_dir)
    try:
        loop.run(config.epochs)
    except CancelFit:
        if loop.best_state is not None:
            _save(loop, config, run_dir, boxset, val, size, freeze, plan, t0)
        raise
    metrics = _save(loop, config, run_dir, boxset, val, size, freeze, plan, t0)
    emit("fit_end", map50=metrics["map50"], map=metrics["map"], best_epoch=metrics["best_epoch"],
         wall_s=metrics["wall_s"])
    return metrics


class Loop:
    """Epochs of one detector with its optimiser; keeps the best epoch by validation mAP@50."""

    def __init__(self, model, config, device, train, val, classes, emit, run_dir, quiet: bool = False):
        self.model, self.config, self.device, self.train, self.val = model, config, device, train, val
        self.classes, self.emit, self.run_dir, self.quiet = classes, emit, run_dir, quiet
        self.transform = augment.pipeline(config.augment, train.pixels.shape[-1])
        self.best_state = self.best_epoch = None
        self.best_map50 = -1.0
        self.history: list[dict] = []
        self.step = 0
        self.images_per_s = 0.0
        self.on_quiet_epoch = None  # told each epoch's record when quiet (the Auto plan's progress notices)
        self.train_stages = self.val_stages = None  # a frozen, unaugmented body's outputs, computed once

    def _body_is_constant(self) -> bool:
        """The body's outputs never change in this run: frozen, BatchNorm on running statistics, pictures not
        augmented, and a size torchvision does not pad (a multiple of 32)."""
        body = self.model.backbone.body
        return (self.transform is None and self.config.bn_policy != "train" and self.train.pixels.shape[-1] % 32 == 0
                and not any(p.requires_grad for p in body.parameters()))

    def _stages(self, which: str, index: torch.Tensor | slice):
        stages = self.train_stages if which == "train" else self.val_stages
        if stages is None:
            return nullcontext()
        return given_stages(self.model, [s[index].to(self.device) for s in stages])

    def run(self, epochs: int) -> None:
        first_state = _trainable_state(self.model)
        scale = self.config.lr / _default_lr(self.config.freeze)  # the user's rate, relative to the plan's default
        for attempt in range(2):
            try:
                return self._epochs(epochs, scale)
            except _Diverged as blown:
                if attempt == 1:
                    raise TrainingDiverged(f"training became unstable twice ({blown}): lower the learning rate "
                                           "(--lr), or train fewer layers") from None
                self.model.load_state_dict(first_state, strict=False)
                scale /= 10
                self.best_state, self.best_map50, self.history = None, -1.0, []
                self._say(f"the loss blew up ({blown}): restarting from the first weights at a tenth of the rate")

    def _epochs(self, epochs: int, scale: float) -> None:
        cfg = self.config
        optimizer = torch.optim.AdamW(_param_groups(self.model, HEAD_LR * scale), weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(len(self.train.pixels) / min(cfg.batch_size, len(self.train.pixels)))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_epochs * per_epoch,
                                                                               epochs * per_epoch))
        dtype = autocast_dtype(self.device)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        reference, stale = None, 0
        if self.train_stages is None and self._body_is_constant():
            # frozen and unaugmented: the body's outputs are computed once, and only the rest runs per step
            self.train_stages = frozen_body_outputs(self.model, self.train.pixels, self.device)
            self.val_stages = frozen_body_outputs(self.model, self.val.pixels, self.device)
        if not self.quiet:
            self.emit("phase_start", phase="train", epochs=epochs, lr=HEAD_LR * scale,
                      body_cached=self.train_stages is not None)
        for epoch in range(1, epochs + 1):
            started, seen, sums = time.time(), 0, {}
            layers.set_train_mode(self.model, cfg.bn_policy)
            order = torch.randperm(len(self.train.pixels), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            for start in range(0, len(order), min(cfg.batch_size, len(order))):
                index = order[start:start + cfg.batch_size]
                images, targets = self._batch(index)
                with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None), \
                        self._stages("train", index):
                    terms = self.model(images, targets)
                loss = sum(terms.values())
                value = loss.detach().item()
                reference = value if reference is None else reference
                if not math.isfinite(value) or value > DIVERGED_OVER_START * max(reference, 1.0):
                    raise _Diverged(f"loss {value:.3g} at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], GRAD_CLIP)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                self.step += 1
                seen += len(images)
                for name, term in terms.items():
                    sums[name] = sums.get(name, 0.0) + term.detach().item() * len(images)
                sums["loss"] = sums.get("loss", 0.0) + value * len(images)
                if not self.quiet:
                    self.emit("batch_end", epoch=epoch, step=self.step, phase="train", loss=value,
                              **{name: term.detach().item() for name, term in terms.items()})
                elif stop_requested(self.run_dir):
                    raise CancelFit("stopped by the user")
            train_seconds = time.time() - started
            self.images_per_s = seen / max(train_seconds, 1e-9)
            scores = self.validate()
            record = {"epoch": epoch, "phase": "train", "train_loss": sums["loss"] / seen,
                      "train_classification": sums.get("classification", 0.0) / seen,
                      "train_box": sums.get("bbox_regression", 0.0) / seen,
                      "train_ctrness": sums.get("bbox_ctrness", 0.0) / seen,
                      "val_map50": scores["map50"] or 0.0, "val_map": scores["map"] or 0.0,
                      "images_per_s": round(self.images_per_s, 2), "seconds": round(time.time() - started, 2),
                      "step": self.step}
            self.history.append(record)
            if not self.quiet:
                self.emit("epoch_end", **record)
            elif self.on_quiet_epoch is not None:
                self.on_quiet_epoch(record)
            if record["val_map50"] > self.best_map50 + 1e-6:
                self.best_map50, self.best_epoch, stale = record["val_map50"], epoch, 0
                self.best_state = _trainable_state(self.model)
                if not self.quiet:
                    self.emit("checkpoint", epoch=epoch, val_map50=record["val_map50"])
            else:
                stale += 1
                if cfg.early_stopping and stale >= cfg.early_stopping:
                    self._say(f"early stopping: validation mAP@50 did not improve for {cfg.early_stopping} epochs",
                              epoch=epoch)
                    break

    def _batch(self, index: torch.Tensor) -> tuple[list[torch.Tensor], list[dict]]:
        images, targets = [], []
        for i in index.tolist():
            image, target = augment.apply(self.transform, self.train.pixels[i], self.train.targets[i])
            images.append(image.to(self.device, non_blocking=True).float() / 255)
            targets.append({k: v.to(self.device) for k, v in target.items()})
        return images, targets

    @torch.no_grad()
    def predict_val(self, batch_size: int = 16) -> list[dict]:
        self.model.eval()
        outputs = []
        for start in range(0, len(self.val.pixels), batch_size):
            images = [p.to(self.device).float() / 255 for p in self.val.pixels[start:start + batch_size]]
            with self._stages("val", slice(start, start + batch_size)):
                found = self.model(images)
            outputs += [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in out.items()}
                        for out in found]
        return outputs

    def validate(self) -> dict:
        return map_scores(self.predict_val(), self.val.targets)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)

    def _say(self, message: str, **info) -> None:
        if not self.quiet:
            self.emit("notice", message=message, **info)


def auto_plan(config, run_dir, emit, train, val, classes, size, device) -> tuple[str, dict]:
    """Measure each AUTO_CANDIDATES plan for a few epochs; keep the simplest unless another wins clearly."""
    epochs = min(AUTO_EPOCHS, config.epochs)
    measured = []
    for freeze in AUTO_CANDIDATES:
        emit("notice", phase="plan", message=f"Auto plan: measuring freeze={freeze} for {epochs} epoch(s)")
        torch.manual_seed(config.seed)
        model = build(config.backbone, len(classes), config.weights, size)
        groups = layer_groups(model)
        layers.apply_freeze(model, groups, layers.parse_freeze(freeze, groups), config.bn_policy)
        started = time.time()
        loop = Loop(model.to(device), config.replace(freeze=freeze, lr=_default_lr(freeze)), device, train, val,
                    classes, emit, run_dir, quiet=True)
        loop.on_quiet_epoch = lambda record, freeze=freeze: emit(
            "notice", phase="plan", message=f"Auto plan, freeze={freeze}: epoch {record['epoch']} of {epochs}, "
                                            f"validation mAP@50 {record['val_map50']:.2f}")
        loop.run(epochs)
        measured.append({"freeze": freeze, "val_map50": round(loop.best_map50, 4), "seconds": round(time.time() - started, 1)})
    kept = measured[0]
    for candidate in measured[1:]:
        if candidate["val_map50"] > kept["val_map50"] + AUTO_MARGIN:
            kept = candidate
    # "words" as the classifier's plan.json has them: the Layers page shows the latest measurement's sentence.
    words = (", ".join(f"{m['freeze']} mAP@50 {m['val_map50']:.2f} in {m['seconds']:.0f} s" for m in measured)
             + f" after {epochs} epoch(s) each; kept {kept['freeze']} ({AUTO_RULE})")
    plan = {"candidates": measured, "kept": kept["freeze"], "epochs_each": epochs, "margin": AUTO_MARGIN,
            "rule": AUTO_RULE, "words": words}
    atomic_write_json(RunFolder(run_dir).plan, plan)
    emit("notice", phase="plan", message="Auto plan: " + words)
    return kept["freeze"], plan


def _save(loop: Loop, config, run_dir: Path, boxset, val, size: int, freeze: str, plan, t0: float) -> dict:
    """Weights of the best epoch, labels, preprocessing, the validation detections and metrics.json."""
    loop.restore_best()
    folder = RunFolder(run_dir)
    model = loop.model
    atomic_write_bytes(folder.weights, safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()}))
    atomic_write_json(folder.labels, {"classes": boxset.classes})
    transform = model.transform
    atomic_write_json(folder.preprocess, {
        "task": "detect", "backbone": config.backbone, "weights": config.weights,
        "architecture": architecture(model.backbone.body), "num_classes": len(boxset.classes), "image_size": size,
        "mean": list(transform.image_mean), "std": list(transform.image_std), "resize": "stretch to a square, bilinear",
        "score_thresh": model.score_thresh, "nms_thresh": model.nms_thresh})
    predictions = loop.predict_val()
    scores = box_metrics(predictions, val.targets, boxset.classes)
    atomic_write_json(folder.detections, _detections(boxset, val, predictions))
    metrics = {"task": "detect", "classes": boxset.classes, **{k: v for k, v in scores.items()},
               "best_epoch": loop.best_epoch, "epochs_run": len(loop.history), "freeze": freeze, "plan": plan,
               "image_size": size, "n_train": len(loop.train.pixels), "n_val": len(val.pixels),
               "wall_s": round(time.time() - t0, 2), "images_per_s": round(loop.images_per_s, 2),
               "history": loop.history, "validation": f"{len(val.pixels)} pictures held out",
               "validation_method": {"kind": "holdout"}}
    atomic_write_json(folder.metrics, metrics)
    return metrics


def _detections(boxset, val, predictions: list[dict]) -> dict:
    """Every validation picture's true and predicted boxes, in the stored picture's pixels."""
    rows = []
    for file, (sx, sy), target, predicted in zip(val.files, val.scales, val.targets, predictions):
        back = torch.tensor([1 / sx, 1 / sy, 1 / sx, 1 / sy])
        rows.append({"file": file, "path": str(boxset.root / file),
                     "true_boxes": (target["boxes"] * back).round(decimals=1).tolist(),
                     "true_labels": target["labels"].tolist(),
                     "boxes": (predicted["boxes"] * back).round(decimals=1).tolist(),
                     "scores": [round(s, 4) for s in predicted["scores"].tolist()],
                     "labels": predicted["labels"].tolist()})
    return {"classes": boxset.classes, "images": rows}


def _param_groups(model, lr: float) -> list[dict]:
    """The pyramid and the detection head at `lr`; trained backbone layers at BACKBONE_LR_RATIO of it."""
    head, body = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (body if name.startswith("backbone.body.") else head).append(parameter)
    groups = [{"params": head, "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * BACKBONE_LR_RATIO})
    return groups


def _default_lr(freeze: str) -> float:
    from tl_core.config import recommended_lr

    return recommended_lr(freeze)


def _warmup_cosine(warmup_steps: float, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _trainable_state(model) -> dict:
    """A CPU copy of what training changes (trainable parameters and buffers): the frozen rest cannot move."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in trainable or k in buffers}
