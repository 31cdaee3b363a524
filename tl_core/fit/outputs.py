"""What a finished (or cancelled) fit writes into its run folder: the kept weights, labels,
preprocessing, the validation predictions (and every class's probability) and metrics.json, with which
weights were kept and why."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..models import backbones
from ..models.devices import describe
from .metrics import classification_metrics
from ..ops.runs import write_metrics, write_model, write_predictions, write_val_probs


def save_outputs(fit) -> dict:
    """Write the model as it is now (BestCheckpoint restored the best epoch on "before_save") and the metrics."""
    write_model(fit.run_dir, fit.model, {"classes": fit.classes}, {
        "backbone": backbones.architecture(fit.model), "num_classes": len(fit.classes), **fit.net.preprocess,
        "features": fit.net.feature_kind})
    probs = fit.progress.val_probs_at.get(fit.best["epoch"])
    if probs is None:
        probs = fit.predict_probs(fit.val_idx)
    y_val = fit.labels[fit.val_idx].cpu()
    confidence, predicted = probs.max(1)
    write_predictions(fit.run_dir, ["path", "label", "predicted", "confidence"],
                      [[str(fit.paths[i]), fit.classes[y], fit.classes[k], f"{p:.6f}"]
                       for i, y, k, p in zip(fit.val_idx, y_val.tolist(), predicted.tolist(), confidence.tolist())])
    # every class's probability: what tl_core.quality.label_errors judges
    write_val_probs(fit.run_dir, probs.float().cpu().numpy())
    wall = time.time() - fit.progress.t0
    val_loss = F.nll_loss(probs.clamp_min(1e-12).log(), y_val).item()
    metrics = classification_metrics(y_val.tolist(), predicted.tolist(), fit.classes)
    metrics = {"val_acc": metrics.pop("accuracy"), "val_balanced_acc": metrics.pop("balanced_accuracy"),
               "val_loss": val_loss, **metrics,
               "best_epoch": fit.best["epoch"], "epochs_run": fit.progress.epoch, "wall_s": round(wall, 2),
               "images_per_s": round(len(fit.train_idx) * fit.progress.epoch / wall, 1),
               "n_train": len(fit.train_idx), "n_val": len(fit.val_idx), "validation": fit.validation,
               "validation_method": fit.validation_method, "features": fit.net.feature_kind,
               "head": fit.net.head_kind, "class_weights": fit.class_weighting,
               "device": describe(fit.device), **fit.net.counts, "kept": kept_weights(fit),
               **fit.extra_metrics}
    if fit.device.type == "cuda":
        metrics["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(fit.device) / 2**20, 1)
    write_metrics(fit.run_dir, metrics)
    return metrics


def kept_weights(fit) -> dict:
    """Which weights the saved model holds, in facts and in words: the probe's when fine-tuning
    never beat it on validation, whatever the run's plan was."""
    head = next(g for g in fit.net.groups if g.name == fit.net.head_name)
    best = fit.best
    from_probe = best["phase"] == "probe"
    kept = {"phase": best["phase"], "epoch": best["epoch"], "plan": "head" if from_probe else fit.config.freeze,
            "trainable_params": head.num_params if from_probe else fit.net.counts["trainable_params"], "reason": ""}
    tuned = best["by_phase"].get("finetune")
    if from_probe and fit.net.trainable != {fit.net.head_name}:
        if tuned:
            probe = dict(best["by_phase"].get("held_out_probe") or best["by_phase"]["probe"])
            if fit.probe_bar is not None:  # the bar fine-tuning had to clear (Fit.set_probe_bar)
                probe["val_acc"] = max(probe["val_acc"], fit.probe_bar)
            n_val = fit.held_out_n_val or len(fit.val_idx)
            if tuned["val_acc"] > probe["val_acc"]:
                kept["reason"] = (f"fine-tuning's best ({tuned['val_acc']:.1%} at epoch {tuned['epoch']}) beat the "
                                  f"probe's {probe['val_acc']:.1%} by less than the noise of {n_val} "
                                  f"validation images, so the model kept is the probe's: only the head learnt")
            else:
                kept["reason"] = (f"fine-tuning never beat the probe on validation (its best: {tuned['val_acc']:.1%} "
                                  f"at epoch {tuned['epoch']}, against {probe['val_acc']:.1%}), so the model kept is "
                                  f"the probe's: only the head learnt")
        else:
            kept["reason"] = ("fine-tuning ended before its first epoch, so the model kept is the probe's: "
                              "only the head learnt")
        if "held_out_probe" in best["by_phase"]:
            kept["reason"] += (f"; the head was then refitted on all {len(fit.paths)} images, validated by "
                               f"{fit.validation}, as feature extraction does")
    return kept


