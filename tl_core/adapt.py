"""Domain adaptation: train on labelled source images, work on unlabelled target images of another kind.

- The shift meter: how well a domain classifier on the frozen backbone's pooled features tells source
  from target (out of fold), as a proxy A-distance (0: alike, 2: told apart every time), in words.
- AdaBN: every BatchNorm's statistics re-estimated on target images, relative to the source's. The head
  learnt on features the pretrained statistics normalised, so each layer's target activations are
  normalised to land where the source's landed (the plain AdaBN when the statistics were the source's
  own; the identity, up to sampling, when target and source look alike).
- Feature alignment: the target's pooled features moved to the source's per-feature mean and spread
  (per-domain standardisation), folded into the plain Linear head, so predict and export need nothing new.
- DANN: during fine-tuning a domain head behind a gradient-reversal layer on the pooled features, its
  weight warmed up as 2/(1+exp(-10p))-1; a Task (tasks.py seam) that also listens to the loop's events.

`plan_for(config)` gives the callbacks and the task a run's target asks for; what a run adapted lives in
its weights (BatchNorm buffers, the head), and metrics.json's "target" says what changed and by how much.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .fit.callbacks import Callback, _changeable_state
from .config import RunConfig
from .fit.tasks import Batch, Classification

SHIFT_IMAGES_PER_SIDE = 200  # images a side the shift meter uses: enough for a stable 5-fold estimate
ADABN_IMAGES = 128  # images a side AdaBN runs in one batch: each layer's statistics see the adapted layers before
ADABN_MAX_RATIO = 10.0  # a target spread at most this many times the source's (or its inverse), per channel
ALIGN_STD_FLOOR = 0.2  # as the probe's: a feature's spread floored at this share of the median spread
ALIGN_MAX_SCALE = 4.0
DANN_HIDDEN = 256
# Proxy A-distance below which source and target look alike (a domain classifier near chance): adaptation
# has nothing to undo and is not applied. Measured (Fashion-MNIST, 200 a side, Lite0 at 64 px): 0.0-0.25 for
# two draws of one distribution, 1.7-2.0 for the shifts tried (bench/RESULTS.md).
PAD_ALIKE, PAD_VERY_DIFFERENT = 0.5, 1.4


# ---- the shift meter -----------------------------------------------------------------------------
@torch.no_grad()
def pooled_features(model: nn.Module, to_device, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The body's pooled features (what the head reads) of uint8 images, in eval mode, fp32 on the CPU."""
    model.eval()
    out = [model.forward_head(model.forward_features(to_device(pixels[i:i + batch_size])), pre_logits=True)
           .float().cpu() for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "num_features", 0))


def shift_meter(source: torch.Tensor, target: torch.Tensor, source_labels: list[int] | None = None,
                classes: list[str] | None = None, seed: int = 0, typical: int = 4) -> dict:
    """How different two sets of pooled features look: a domain classifier's out-of-fold accuracy and the
    proxy A-distance 2(1-2·error), in words; the most typical images of each side (their indices); and, with
    source labels, the classes the target overlaps least (the highest share judged "source")."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(source), len(target))
    if n < 5:
        raise ValueError(f"the shift meter needs 5 images a side at least (source {len(source)}, target {len(target)})")
    x = torch.cat([source[:n], target[:n]]).numpy()
    y = np.r_[np.zeros(n), np.ones(n)]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    p_target = cross_val_predict(classifier, x, y, cv=folds, method="predict_proba")[:, 1]
    accuracy = float(((p_target > 0.5) == y).mean())
    pad = 2 * (1 - 2 * min(1 - accuracy, 0.5))
    report = {"pad": round(pad, 3), "domain_acc": round(accuracy, 3), "images_per_side": n, "words": shift_words(pad),
              "typical_source": [int(i) for i in np.argsort(p_target[:n])[:typical]],
              "typical_target": [int(i) for i in np.argsort(-p_target[n:])[:typical]]}
    if source_labels is not None and classes is not None:
        labels = np.asarray(source_labels[:n])
        looks_source = {classes[k]: float((p_target[:n][labels == k] < 0.5).mean())
                        for k in sorted(set(labels.tolist()))}
        report["least_overlap"] = [{"class": name, "told_apart": round(share, 3)}
                                   for name, share in sorted(looks_source.items(), key=lambda kv: -kv[1])[:3]]
    return report


def shift_words(pad: float) -> str:
    if pad < PAD_ALIKE:
        return "the target images look like the training images to the backbone: expect little drop"
    if pad < PAD_VERY_DIFFERENT:
        return "the target images look somewhat different: expect some drop; adaptation may help"
    return "the target images look very different: expect a drop, try adaptation"


def measure_shift(dataset_dir: str | Path, target_dir: str | Path, backbone: str = "tf_efficientnet_lite0",
                  weights: str = "embedded", image_size: int | None = 96, seed: int = 0) -> dict:
    """The shift meter between two ingested datasets (labelled source, any target), before any training,
    with the typical images of each side as paths. (Images resized to `image_size` px to stay quick.)"""
    from .models import backbones
    from .fit.batches import normalizer
    from .data.datasets import decode_images, load_dataset
    from .ops.storage import workspace_root

    source, target = load_dataset(dataset_dir), load_dataset(target_dir)
    model = backbones.create_model(backbone, len(source.classes), weights=weights)
    preprocess = backbones.data_config(model, image_size)
    src_idx = _sample(len(source.items), SHIFT_IMAGES_PER_SIDE, seed)
    tgt_idx = _sample(len(target.items), SHIFT_IMAGES_PER_SIDE, seed)
    src_paths, tgt_paths = [source.paths()[i] for i in src_idx], [target.paths()[i] for i in tgt_idx]
    to_device = normalizer(preprocess, torch.device("cpu"), False)
    feats = [pooled_features(model, to_device, decode_images(paths, preprocess["input_size"][-1],
                                                             preprocess["crop_pct"], preprocess["interpolation"],
                                                             cache_dir=workspace_root() / "cache" / "pixels"))
             for paths in (src_paths, tgt_paths)]
    report = shift_meter(feats[0], feats[1], [source.labels()[i] for i in src_idx], source.classes, seed)
    report["typical_source"] = [str(src_paths[i]) for i in report["typical_source"]]
    report["typical_target"] = [str(tgt_paths[i]) for i in report["typical_target"]]
    return report


def _sample(n: int, k: int, seed: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


# ---- AdaBN ------------------------------------------------------------------------------------------
def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, source: torch.Tensor, target: torch.Tensor) -> int:
    """Re-estimate every BatchNorm's running statistics on `target` (normalised images, one batch),
    relative to `source`'s: the target's activations are normalised to the mean and spread the source's had.
    Only running_mean and running_var change. Returns the number of BatchNorm layers adapted."""
    layers = batchnorms(model)
    model.eval()
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, _moments(args[0]))) for bn in layers]
    try:
        model(source)  # the unchanged model: what each layer saw while the head learnt
    finally:
        for hook in hooks:
            hook.remove()

    def adapt(bn, args):
        mean_t, var_t = _moments(args[0])
        mean_s, var_s = seen[bn]
        floor = 1e-5 + 1e-3 * var_s.median()
        ratio = ((var_t + floor) / (var_s + floor)).sqrt().clamp(1 / ADABN_MAX_RATIO, ADABN_MAX_RATIO)
        mean, var = bn.running_mean.float(), bn.running_var.float()
        bn.running_mean.copy_(mean_t - (mean_s - mean) * ratio)
        bn.running_var.copy_(((var + bn.eps) * ratio.pow(2) - bn.eps).clamp_min(0))

    hooks = [bn.register_forward_pre_hook(adapt) for bn in layers]
    try:
        model(target)  # layer by layer: each adapts to what the layers before it, already adapted, give it
    finally:
        for hook in hooks:
            hook.remove()
    return len(layers)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    dims = [d for d in range(x.dim()) if d != 1]
    return x.mean(dims), x.var(dims, unbiased=False)


# ---- feature alignment ------------------------------------------------------------------------------------
@torch.no_grad()
def fold_alignment(head: nn.Linear, source: torch.Tensor, target: torch.Tensor) -> dict:
    """Fold per-domain standardisation into `head`: for target features x, head'(x) = head(a(x)) with
    a(x) = (x - mean_t)·std_s/std_t + mean_s, per feature. The identity when both sides are the same."""
    mean_s, std_s = _mean_std(source)
    mean_t, std_t = _mean_std(target)
    scale = (std_s / std_t).clamp(1 / ALIGN_MAX_SCALE, ALIGN_MAX_SCALE)
    shift = mean_s - mean_t * scale
    weight = head.weight.float()
    head.bias.add_((weight @ shift).to(head.bias.dtype))
    head.weight.mul_(scale.to(head.weight.dtype)[None, :])
    return {"mean_shift": round(float((mean_t - mean_s).abs().mean() / std_s.mean()), 4),
            "scale_median": round(float(scale.median()), 4)}


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    std = x.std(0, unbiased=False)
    return x.mean(0), std.clamp_min(ALIGN_STD_FLOOR * std.median() + 1e-6)


# ---- DANN ----------------------------------------------------------------------------------------------------
class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """The identity forward; backward multiplies the gradient by -weight (DANN's gradient reversal)."""
    return _ReverseGradient.apply(x, weight)


def reversal_weight(progress: float) -> float:
    """DANN's warm-up of the reversal weight over training progress p in [0, 1]: 2/(1+exp(-10p)) - 1."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class DomainAdversarial(Classification, Callback):
    """Classification plus a domain head on the pooled features of source and target batches, behind gradient
    reversal: the head learns to tell the domains apart, the body learns to make that impossible.
    It listens to the loop for the target images (fit_start) and for progress (the weight's warm-up)."""

    def __init__(self, adaptation: "Adaptation", label_smoothing: float = 0.0, seed: int = 0):
        super().__init__(label_smoothing)
        self.adaptation = adaptation
        self.domain_head: nn.Module | None = None  # made at fit_start, when the body's width is known
        self.target = None
        self.weight = 0.0
        self.domain_loss = None  # the last batch's, for metrics.json
        self.generator = torch.Generator().manual_seed(seed)
        self.phase_epochs = self.phase_first_epoch = 0
        self.last = None  # (epoch, weights) at the end of the last fine-tune epoch, while adapting

    may_keep_probe = False  # keep_last_epoch keeps the last adversarial epoch, whatever validation preferred

    def modules(self) -> list[nn.Module]:
        return [self.domain_head] if self.domain_head is not None else []

    def on_fit_start(self, info, fit):
        from .fit.batches import PixelSource

        width = fit.model.num_features
        self.domain_head = nn.Sequential(nn.Linear(width, DANN_HIDDEN), nn.ReLU(), nn.Linear(DANN_HIDDEN, 1))
        self.domain_head.to(fit.device)
        pixels = self.adaptation.target.pixels
        self.target = PixelSource(fit.model, pixels, torch.zeros(len(pixels), dtype=torch.long),
                                  fit.sources.pixels.to_device, fit.sources.pixels.augment)

    def on_phase_start(self, info, fit):
        if info.get("phase") == "finetune":
            self.phase_epochs, self.phase_first_epoch, self.weight = info["epochs"], info["epoch"], 0.0

    def on_batch_end(self, info, fit):
        if info.get("phase") == "finetune" and info.get("batches"):
            done = (info["epoch"] - self.phase_first_epoch - 1) * info["batches"] + info["batch"]
            progress = done / (self.phase_epochs * info["batches"])
            self.weight = reversal_weight(progress) if self.adaptation.applied else 0.0

    def step(self, batch: Batch, features: torch.Tensor, head: nn.Module) -> dict:
        out = super().step(batch, features, head)
        idx = torch.randint(len(self.target.pixels), (len(batch.idx),), generator=self.generator)
        target_features = self.target.features(self.target.batch(idx, train=True).inputs)
        both = reverse_gradient(torch.cat([features, target_features]).float(), self.weight)
        domain = torch.cat([torch.zeros(len(features)), torch.ones(len(target_features))]).to(both.device)
        domain_loss = F.binary_cross_entropy_with_logits(self.domain_head(both).squeeze(1), domain)
        out["loss"] = out["loss"] + domain_loss
        out["domain_loss"] = self.domain_loss = domain_loss.detach()
        return out

    def on_epoch_end(self, info, fit):
        if info.get("phase") == "finetune" and self.adaptation.applied:
            self.last = (info["epoch"], _changeable_state(fit.model))

    def keep_last_epoch(self, fit) -> None:
        """Put back the last DANN epoch's weights (Adaptation calls it on before_save, after BestCheckpoint).

        The best epoch by source validation is often the probe's, before any adversarial step: source
        images cannot tell whether features that fool the domain head serve the target, so DANN keeps
        where its warm-up ends, as the method prescribes."""
        if self.last is None:
            return
        epoch, state = self.last
        fit.model.load_state_dict(state, strict=False)
        fit.best = {**fit.best, "epoch": epoch, "phase": "finetune"}
        fit.progress.val_probs_at.pop(epoch, None)
        fit.extra_metrics.setdefault("target", {})["dann"] = {
            "kept_epoch": epoch, "reversal_weight": round(self.weight, 4),
            "domain_loss": round(float(self.domain_loss), 4) if self.domain_loss is not None else None}


# ---- a run's adaptation --------------------------------------------------------------------------------------
@dataclass
class TargetImages:
    pixels: torch.Tensor  # uint8, unlabelled
    test_pixels: torch.Tensor | None = None  # uint8, labelled: used only to measure
    test_labels: torch.Tensor | None = None
    paths: list = field(default_factory=list)


def load_target(config: RunConfig, classes: list[str], size: int, preprocess: dict) -> TargetImages:
    """The run's target images, decoded as its training images are; the labelled ones mapped to `classes`."""
    from .data.datasets import decode_images, load_dataset
    from .ops.storage import workspace_root

    def decode(paths):
        return decode_images(paths, size, preprocess["crop_pct"], preprocess["interpolation"],
                             cache_dir=workspace_root() / "cache" / "pixels")

    target = load_dataset(config.target_dir)
    images = TargetImages(decode(target.paths()), paths=[str(p) for p in target.paths()])
    if config.target_test_dir:
        test = load_dataset(config.target_test_dir)
        unknown = sorted(set(test.classes) - set(classes))
        if unknown:
            raise ValueError(f"{config.target_test_dir}: the labelled target set has classes the training set "
                             f"lacks: {', '.join(unknown)}")
        images.test_pixels = decode(test.paths())
        images.test_labels = torch.tensor([classes.index(test.classes[k]) for k in test.labels()])
    return images


class Adaptation(Callback):
    """A run's target domain: measured at fit_start (the shift meter), adapted on before_save after the best
    weights are back (AdaBN, alignment; "auto" picks by a quick check there), measured again; all recorded under
    metrics.json's "target": source-only against adapted, on labelled target images when there are some,
    else the predictions' confidence and entropy on the unlabelled ones."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.method = config.adapt
        self.target: TargetImages | None = None
        self.record: dict = {}
        self.applied = False  # decided at fit_start by the shift meter
        self.dann: DomainAdversarial | None = None

    def on_fit_start(self, info, fit):
        self.target = load_target(self.config, fit.classes, fit.net.size, fit.net.preprocess)
        to_device = fit.sources.pixels.to_device
        src_idx = [fit.train_idx[i] for i in _sample(len(fit.train_idx), SHIFT_IMAGES_PER_SIDE, self.config.seed)]
        tgt_idx = _sample(len(self.target.pixels), SHIFT_IMAGES_PER_SIDE, self.config.seed)
        source = pooled_features(fit.model, to_device, fit.sources.pixels.pixels[src_idx], self.config.batch_size)
        target = pooled_features(fit.model, to_device, self.target.pixels[tgt_idx], self.config.batch_size)
        shift = shift_meter(source, target, fit.labels[src_idx].tolist(), fit.classes, self.config.seed)
        shift["typical_source"] = [str(fit.paths[src_idx[i]]) for i in shift["typical_source"]]
        shift["typical_target"] = [self.target.paths[tgt_idx[i]] for i in shift["typical_target"]]
        if self.method == "auto" and shift["pad"] < PAD_ALIKE:
            self.method = "none"  # nothing to adapt; otherwise the quick check decides on before_save
        # Adapting to a target that looks like the source only fits sampling noise (on the bench's no-shift
        # draws AdaBN and alignment each cost 1-2 points): below PAD_ALIKE the model is left as it is.
        self.applied = self.method != "none" and shift["pad"] >= PAD_ALIKE
        self.record = {"method": self.method, "asked": self.config.adapt, "applied": self.applied,
                       "n_target": len(self.target.pixels),
                       "n_target_test": 0 if self.target.test_labels is None else len(self.target.test_labels),
                       "shift": shift}
        if self.method != "none" and not self.applied:
            self.record["not_applied"] = (f"the target looks like the training images (proxy A-distance "
                                          f"{shift['pad']:.2f} < {PAD_ALIKE}): nothing to adapt, the model is "
                                          f"left as it is")
        fit.extra_metrics["target"] = self.record
        fit.emit("notice", phase="adapt", message=f"shift meter: {shift['words']} (proxy A-distance "
                                                  f"{shift['pad']:.2f}); adaptation: {self.method}"
                                                  + ("" if self.applied or self.method == "none"
                                                     else " (not applied: nothing to adapt)"))

    def on_before_save(self, info, fit):
        if self.target is None:
            return
        if self.dann is not None and self.applied:
            self.dann.keep_last_epoch(fit)
        before = self._measure(fit)
        if self.applied and self.method == "auto":
            self.method = self.record["method"] = self._quick_check(fit, before)
            if self.method == "none":
                self.applied = self.record["applied"] = False
        if not self.applied:  # "none", or a target with nothing to adapt: what the adapted model does is this
            self.record["source_only"] = before
            if self.method != "none":
                self.record["adapted"] = before
        elif self.method in ("adabn", "align"):
            self._apply(fit, fit.model, self.method)
        if self.applied and self.method in ("adabn", "align"):
            self.record["source_only"], self.record["adapted"] = before, self._measure(fit)
        elif self.applied:  # DANN adapted while training: its source-only twin is another run
            self.record["adapted"] = before
        fit.emit("notice", phase="adapt", message=describe_target(self.record))

    def _apply(self, fit, model: nn.Module, method: str) -> None:
        if method == "adabn":
            source = _normalised_sample(fit, fit.sources.pixels.pixels[fit.train_idx])
            target = _normalised_sample(fit, self.target.pixels)
            self.record["adabn_layers"] = adapt_batchnorm(model, source, target)
        else:
            target = pooled_features(model, fit.sources.pixels.to_device, self.target.pixels, self.config.batch_size)
            self.record["alignment"] = fold_alignment(model.get_classifier(), _source_features(fit), target)

    def _quick_check(self, fit, before: dict) -> str:
        """"auto": the candidate whose predictions on the unlabelled target images are surest (lowest mean
        entropy), leaving the model as it is unless a method beats it. No target label is used. On the bench's
        shifts this ranked source-only, AdaBN and alignment as their target accuracy did (bench/RESULTS.md)."""
        import copy

        entropies = {"none": before["entropy"]}
        candidates = ["adabn", "align"] if batchnorms(fit.model) else ["align"]
        for method in candidates:
            model = copy.deepcopy(fit.model)
            self._apply(fit, model, method)
            entropies[method] = round(float(_entropy(_probs(fit, self.target.pixels, model)).mean()), 4)
        self.record.pop("adabn_layers", None)
        self.record.pop("alignment", None)
        self.record["quick_check"] = {"entropy": entropies}
        return min(entropies, key=entropies.get)

    def _measure(self, fit) -> dict:
        """Accuracy on the labelled target images (when any), and confidence and entropy on the unlabelled ones."""
        probs = _probs(fit, self.target.pixels)
        entropy = _entropy(probs)
        out = {"confidence": round(float(probs.max(1).values.mean()), 4), "entropy": round(float(entropy.mean()), 4)}
        if self.target.test_labels is not None:
            predicted = _probs(fit, self.target.test_pixels).argmax(1)
            out["target_acc"] = round(float((predicted == self.target.test_labels).float().mean()), 4)
        return out


def describe_target(record: dict) -> str:
    """One line on what adaptation did, in words."""
    before, after = record.get("source_only"), record.get("adapted")
    if record.get("not_applied"):
        before = None
    if before and after and "target_acc" in before:
        return (f"{record['method']}: target accuracy {before['target_acc']:.1%} source-only → "
                f"{after['target_acc']:.1%} adapted")
    if before and after:
        return (f"{record['method']}: no labelled target images to measure accuracy; mean confidence on target "
                f"{before['confidence']:.1%} → {after['confidence']:.1%}, entropy {before['entropy']:.2f} → "
                f"{after['entropy']:.2f}")
    measured = after or before
    if "target_acc" in measured:
        return f"{record['method']}: target accuracy {measured['target_acc']:.1%}"
    return (f"{record['method']}: no labelled target images; mean confidence on target {measured['confidence']:.1%}, "
            f"entropy {measured['entropy']:.2f}")


def _probs(fit, pixels: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    model = model or fit.model
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(pixels), fit.config.batch_size):
            out.append(model(fit.sources.pixels.to_device(pixels[start:start + fit.config.batch_size])).float().softmax(1).cpu())
    return torch.cat(out)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def _normalised_sample(fit, pixels: torch.Tensor) -> torch.Tensor:
    return fit.sources.pixels.to_device(pixels[_sample(len(pixels), ADABN_IMAGES, fit.config.seed)])


def _source_features(fit) -> torch.Tensor:
    """The training images' pooled features as the kept model sees them (the probe's cache while the body is frozen)."""
    if fit.sources.features is not None and not fit.trains_on_images:
        return fit.sources.features.features_all[fit.train_idx].float().cpu()
    return pooled_features(fit.model, fit.sources.pixels.to_device, fit.sources.pixels.pixels[fit.train_idx], fit.config.batch_size)


@dataclass
class Plan:
    callbacks: list = field(default_factory=list)
    task: Classification | None = None


def plan_for(config: RunConfig) -> Plan:
    """The callbacks and task a run's target domain asks for; nothing without target images."""
    if not config.target_dir:
        return Plan()
    adaptation = Adaptation(config)
    if config.adapt != "dann":
        return Plan([adaptation])
    task = adaptation.dann = DomainAdversarial(adaptation, config.label_smoothing, config.seed)
    return Plan([adaptation, task], task)
