"""What a multi-task fit writes into its run folder: the same contract as a single-task run (weights, labels,
preprocessing, predictions, metrics), with the task layout in labels.json, one predictions row per image and
task, and metrics per task; the headline val_acc is the mean of the tasks' scores."""
from __future__ import annotations

import time

import torch

from ..models import backbones
from ..models.devices import describe
from . import MISSING, task_metrics
from ..fit.outputs import kept_weights
from ..ops.runs import write_metrics, write_model, write_predictions


def save_multitask_outputs(fit) -> dict:
    layout = fit.layout
    write_model(fit.run_dir, fit.model, {"classes": layout.output_names(), "tasks": layout.to_list(fit.thresholds)}, {
        "backbone": backbones.architecture(fit.model), "num_classes": layout.width, **fit.net.preprocess,
        "features": fit.net.feature_kind})
    probs = fit.progress.val_probs_at.get(fit.best["epoch"])
    if probs is None:
        probs = fit.predict_probs(fit.val_idx)
    y = fit.targets.cpu()[fit.val_idx]
    write_predictions(fit.run_dir, ["path", "label", "predicted", "confidence", "task"],
                      _prediction_rows([fit.paths[i] for i in fit.val_idx], probs, y, layout, fit.thresholds))
    per_task = task_metrics(probs, y, layout, fit.thresholds)
    summary = fit.task_summary(probs, y)
    wall = time.time() - fit.progress.t0
    metrics = {"val_acc": summary["score"], "val_loss": summary["loss"],
               "headline": "mean of the tasks' scores (accuracy for single-label tasks, mAP for multi-label)",
               "macro_f1": sum(t["macro_f1"] for t in per_task.values()) / len(per_task),
               "tasks": per_task, "task_weights": fit.task.weights,
               "best_epoch": fit.best["epoch"], "epochs_run": fit.progress.epoch, "wall_s": round(wall, 2),
               "images_per_s": round(len(fit.train_idx) * fit.progress.epoch / wall, 1),
               "n_train": len(fit.train_idx), "n_val": len(fit.val_idx), "validation": fit.validation,
               "validation_method": fit.validation_method, "features": fit.net.feature_kind, "head": "logistic",
               "device": describe(fit.device), **fit.net.counts, "kept": kept_weights(fit), **fit.extra_metrics}
    if fit.device.type == "cuda":
        metrics["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(fit.device) / 2**20, 1)
    write_metrics(fit.run_dir, metrics)
    return metrics


def _prediction_rows(paths, probs, y, layout, thresholds):
    """path, label, predicted, confidence, task: one row per image and task (tags joined by ';')."""
    for i, image in enumerate(paths):
        for head in layout:
            part, target = probs[i, head.outputs], y[i, head.outputs]
            if head.multi_label:
                cuts = thresholds.get(head.name, [0.5] * len(head.classes))
                label = ";".join(c for c, t in zip(head.classes, target) if t > 0)
                chosen = [(c, float(p)) for c, p, cut in zip(head.classes, part, cuts) if p >= cut]
                predicted = ";".join(c for c, _ in chosen)
                confidence = min((p for _, p in chosen), default=float(1 - part.max()))
            else:
                label = "" if target[0] == MISSING else head.classes[int(target.argmax())]
                confidence, k = part.max(0)
                predicted, confidence = head.classes[int(k)], float(confidence)
            yield [str(image), label, predicted, f"{confidence:.6f}", head.name]
