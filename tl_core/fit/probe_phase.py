"""The first phase of a fit: the head fitted on the frozen backbone's features (computed once, cached),
as a logistic regression (or prototypes for few-shot classes) by L-BFGS, one step down the
regularisation path an epoch, so that validation picks how much regularisation this data set needs.
With a multi-layer model, cross-validation first decides whether multi-layer features beat the last layer's."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..ops.runs import record_facts
from ..ops.storage import workspace_root
from . import batches
from .probe import PROBE_ITERS_PER_EPOCH, HeadFits, best_on_path, choose_features, l2_at, one_thread
from .prototypes import PrototypeFits, head_for


def run(fit, epochs: int, message: str = "fitting the new head on the backbone's frozen features",
        reuse_features: bool = False) -> None:
    """The probe phase of `fit` (a tl_core.fit.loop.Fit): `epochs` steps of the regularisation path
    (`reuse_features`: on the frozen features an earlier probe of this fit computed)."""
    fit.start_phase("probe", epochs, message=message)
    if not (reuse_features and fit.sources.features is not None):
        fit.sources.features = frozen_features(fit)
    # The probe's matrices are small: on the CPU they skip thousands of tiny kernel launches and
    # the start-up of CUDA's solver library (seconds on an H100, for a fit that takes 0.3 s here).
    feats = fit.sources.features.features_all.float().cpu()
    train_masks, val_sets = fits_and_validation(fit)
    counts = fit.labels.bincount(minlength=len(fit.classes))
    fit.net.head_kind = head_for(fit.config.head, counts.tolist())
    record_facts(fit.run_dir, head=fit.net.head_kind)
    if fit.net.head_kind == "prototype":
        smallest = int(counts.min())
        fit.emit("notice", phase="probe", kind="head", message=(
            f"a prototype head (each class the mean of its images' features): the smallest class has "
            f"{smallest} image{'s' if smallest != 1 else ''}, too few to fit a regression"
            if fit.config.head == "auto" else "a prototype head (each class the mean of its images' features)"))
    fits_class = PrototypeFits if fit.net.head_kind == "prototype" else HeadFits
    with one_thread():
        if fit.config.features == "auto" and fit.net.feature_kind == "multi-layer" \
                and fit.validation_method.get("kind") != "none":  # nothing to measure the choice on
            feats = _choose_features(fit, feats, train_masks, val_sets, epochs, fits_class)
        fits = fits_class(feats, fit.labels.cpu(), train_masks, len(fit.classes), class_weights=fit.class_weights)
        for k in range(epochs):
            _epoch(fit, fits, val_sets, l2_at(k))
            if fit.stop_phase:
                break


def cross_validated_accuracy(fit, idx: list[int], steps: int) -> float | None:
    """Accuracy on the images `idx` of the probe a head-only run would fit on every image: each image of `idx`
    scored out of fold (k-fold cross-validation on every image, the features the probe kept, the same L2 path).
    None when the images cannot be cross-validated. The bar a fine-tune must clear (issue 24): beating the
    probe fitted on the training split alone is not enough, since the default fits its head on every image."""
    from .run_data import with_cross_validation

    data = with_cross_validation(fit.data, fit.config.seed)
    if not data.folds or not idx:
        return None
    n = len(fit.paths)
    train_masks = torch.ones(len(data.folds), n, dtype=torch.bool)
    for f, fold in enumerate(data.folds):
        train_masks[f, fold] = False
    val_sets = [torch.tensor(fold, dtype=torch.long) for fold in data.folds]
    fits_class = PrototypeFits if fit.net.head_kind == "prototype" else HeadFits
    with one_thread():
        best = best_on_path(fit.sources.features.features_all.float().cpu(), fit.labels.cpu(), train_masks, val_sets,
                            len(fit.classes), steps, fit.config.label_smoothing, fits_class, fit.class_weights)
    order = torch.cat(val_sets).tolist()
    wanted = set(idx)
    scored = [bool(ok) for i, ok in zip(order, best["correct"].tolist()) if i in wanted]
    return sum(scored) / len(scored) if scored else None


def fits_and_validation(fit) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(fits × images training masks, each fit's validation images): one fit per fold (validated on that
    fold), then the kept one on every image; or one fit on the training images, validated on the rest."""
    n, folds = len(fit.paths), fit.data.folds
    if folds:
        train_masks = torch.ones(len(folds) + 1, n, dtype=torch.bool)
        for f, fold in enumerate(folds):
            train_masks[f, fold] = False
        return train_masks, [torch.tensor(fold, dtype=torch.long) for fold in folds]
    train_masks = torch.zeros(1, n, dtype=torch.bool)
    train_masks[0, fit.train_idx] = True
    return train_masks, [torch.tensor(fit.val_idx, dtype=torch.long)]


def frozen_features(fit) -> batches.FeatureSource:
    """Every image's features through the frozen backbone, from the workspace's cache when it has them."""
    key = batches.feature_key(fit.config.backbone, fit.config.weights,
                              {**fit.net.preprocess, "features": fit.net.feature_kind}, fit.paths)
    return batches.feature_source(
        fit.sources.pixels, workspace_root() / "cache" / "features" / f"{key}.npy", fit.config.batch_size,
        on_batch=lambda b, done, total: fit.emit("batch_end", phase="features", epoch=0, batch=b,
                                                 done=done, total=total),
        on_reuse=lambda message: fit.emit("notice", message=message))


def _choose_features(fit, feats: torch.Tensor, train_masks: torch.Tensor, val_sets: list[torch.Tensor],
                     epochs: int, fits_class) -> torch.Tensor:
    """Keep multi-layer features only where they validate better than the last layer's; the features kept."""
    choice = choose_features(feats, fit.model.last_features, fit.labels.cpu(), train_masks, val_sets,
                             len(fit.classes), epochs, fit.config.label_smoothing, fits_class, fit.class_weights)
    record_facts(fit.run_dir, features=choice["features"], features_choice=choice)
    fit.emit("notice", phase="probe", kind="features", message=choice["words"])
    if choice["features"] == "last":
        fit.use_last_layer(len(fit.classes))
        feats = feats[:, -fit.model.num_features:]
    return feats


def _epoch(fit, fits: HeadFits, val_sets: list[torch.Tensor], l2: float) -> None:
    t_epoch = time.time()
    fits.step(l2, fit.config.label_smoothing)
    fits.copy_to(fit.net.head())
    with torch.no_grad():
        log_probs = fits.logits().log_softmax(-1)  # fits × images × classes
        val_log_probs = fits.validation_log_probs(val_sets)[fit.val_idx]
        kept_train = fits.train_masks[-1]
        train_loss, train_acc = loss_acc(log_probs[-1][kept_train], fits.y[kept_train], log_probs=True)
        val_loss, val_acc = loss_acc(val_log_probs, fits.y[fit.val_idx], log_probs=True)
    progress = fit.progress
    progress.epoch += 1
    progress.step += PROBE_ITERS_PER_EPOCH
    progress.val_probs_at[progress.epoch] = val_log_probs.exp()
    fit.emit("epoch_end", phase="probe", epoch=progress.epoch, step=progress.step, l2=l2,
             train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
             seconds=time.time() - t_epoch, elapsed=progress.elapsed(),
             images_per_s=len(fit.train_idx) / max(time.time() - t_epoch, 1e-9))


def loss_acc(logits: torch.Tensor, y: torch.Tensor, log_probs: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits (or log-probabilities) against class indices."""
    y = y.to(logits.device)
    loss = F.nll_loss(logits, y) if log_probs else F.cross_entropy(logits, y)
    return loss.item(), (logits.argmax(1) == y).float().mean().item()
