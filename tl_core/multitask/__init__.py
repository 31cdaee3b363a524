"""Multi-task and multi-label models: one backbone, one head per task, trained together.

A dataset ingested with a labels table (datasets.labels_table) names several tasks: single-label ones (a
category, a colour: softmax over its classes) and multi-label ones (tags: a sigmoid per tag, with a
threshold per tag). The model is the usual backbone with one Linear whose outputs are the tasks' heads side
by side (`TaskLayout` says which outputs are whose): each task's rows are its own head, so predict, export and
the frozen-layer plans never change shape, and labels.json carries the layout.

Training goes through the fit loop's seams: `MultiTaskFit` is the Fit with the probe fitted per head on the
cached features (a logistic regression per single-label task on the images that have its label, one per tag
for multi-label tasks, thresholds chosen on out-of-fold predictions), and `MultiTaskObjective` is the Task
that trains every head and the shared layers jointly when layers are fine-tuned: the sum of the tasks'
losses (weights `task_weights`, 1 each by default), an image without a label for a task adding nothing to it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import load_dataset, stratified_split
from ..fit.metrics import classification_metrics
from ..fit.probe import PROBE_ITERS_PER_EPOCH, HeadFits, out_of_fold
from ..fit.run_data import RunData
from ..fit.tasks import Batch, Task

MISSING = -1.0  # a single-label task's target row when the image has no label for it


@dataclass(frozen=True)
class TaskHead:
    name: str
    kind: str  # "single-label" | "multi-label"
    classes: tuple[str, ...]
    offset: int  # its first output in the model's logits

    @property
    def outputs(self) -> slice:
        return slice(self.offset, self.offset + len(self.classes))

    @property
    def multi_label(self) -> bool:
        return self.kind == "multi-label"


class TaskLayout:
    """The tasks' heads in the model's outputs, in order; built from a dataset's or a run's task list."""

    def __init__(self, tasks: list[dict]):
        heads, offset = [], 0
        for task in tasks:
            heads.append(TaskHead(task["name"], task["kind"], tuple(task["classes"]), offset))
            offset += len(task["classes"])
        self.heads = heads
        self.width = offset

    def __iter__(self):
        return iter(self.heads)

    def output_names(self) -> list[str]:
        return [f"{head.name}: {c}" for head in self.heads for c in head.classes]

    def to_list(self, thresholds: dict | None = None) -> list[dict]:
        out = []
        for head in self.heads:
            entry = {"name": head.name, "kind": head.kind, "classes": list(head.classes), "offset": head.offset}
            if head.multi_label:
                entry["thresholds"] = [float(t) for t in (thresholds or {}).get(head.name, [0.5] * len(head.classes))]
            out.append(entry)
        return out

    def targets(self, items: list[dict]) -> torch.Tensor:
        """images × outputs: one-hot for single-label tasks (all MISSING without a label), 0/1 per tag."""
        y = torch.zeros(len(items), self.width)
        for i, item in enumerate(items):
            labels = item.get("tasks", {})
            for head in self.heads:
                value = labels.get(head.name)
                if head.multi_label:
                    for tag in value or []:
                        if tag in head.classes:
                            y[i, head.offset + head.classes.index(tag)] = 1
                elif value in head.classes:
                    y[i, head.offset + head.classes.index(value)] = 1
                else:
                    y[i, head.outputs] = MISSING
        return y

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax within each single-label head, a sigmoid per tag."""
        out = torch.empty_like(logits, dtype=torch.float32)
        for head in self.heads:
            part = logits[:, head.outputs].float()
            out[:, head.outputs] = part.sigmoid() if head.multi_label else part.softmax(1)
        return out


def has_label(y: torch.Tensor, head: TaskHead) -> torch.Tensor:
    return y[:, head.offset] != MISSING


def task_losses(logits: torch.Tensor, y: torch.Tensor, layout: TaskLayout, label_smoothing: float = 0.0) -> dict:
    """Each task's mean loss over the images that have its label (None where no image has one)."""
    losses = {}
    for head in layout:
        part, target = logits[:, head.outputs].float(), y[:, head.outputs]
        if head.multi_label:
            losses[head.name] = F.binary_cross_entropy_with_logits(part, target)
            continue
        mask = has_label(y, head)
        losses[head.name] = (F.cross_entropy(part[mask], target[mask].argmax(1), label_smoothing=label_smoothing)
                             if mask.any() else None)
    return losses


def task_scores(probs: torch.Tensor, y: torch.Tensor, layout: TaskLayout, thresholds: dict | None = None) -> dict:
    """Each task's headline score: accuracy (single-label) or mean average precision (multi-label)."""
    scores = {}
    for head in layout:
        part, target = probs[:, head.outputs], y[:, head.outputs]
        if head.multi_label:
            scores[head.name] = mean_average_precision(part.numpy(), target.numpy())
        else:
            mask = has_label(y, head)
            scores[head.name] = (part[mask].argmax(1) == target[mask].argmax(1)).float().mean().item() \
                if mask.any() else None
    return scores


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the precision-recall curve, as the mean precision at each positive (None without positives)."""
    if positive.sum() == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(float)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / hits.sum())


def mean_average_precision(probs: np.ndarray, target: np.ndarray) -> float | None:
    aps = [ap for k in range(probs.shape[1]) if (ap := average_precision(probs[:, k], target[:, k] > 0)) is not None]
    return float(np.mean(aps)) if aps else None


def best_thresholds(probs: np.ndarray, target: np.ndarray) -> list[float]:
    """Per tag, the probability threshold with the best F1 on these (out-of-fold) predictions; 0.5 without positives."""
    out = []
    for k in range(probs.shape[1]):
        positive = target[:, k] > 0
        if not positive.any():
            out.append(0.5)
            continue
        candidates = np.unique(np.round(probs[:, k], 4))
        best, best_f1 = 0.5, -1.0
        for t in candidates:
            predicted = probs[:, k] >= t
            tp = float((predicted & positive).sum())
            f1 = 2 * tp / max(predicted.sum() + positive.sum(), 1)
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        out.append(best)
    return out


def task_metrics(probs: torch.Tensor, y: torch.Tensor, layout: TaskLayout, thresholds: dict) -> dict:
    """Per task: accuracy, per-class precision/recall/F1 and the confusion matrix (single-label); mAP, per-tag
    AP and F1 at its threshold (multi-label); with how many images it was measured on."""
    out = {}
    for head in layout:
        part, target = probs[:, head.outputs].numpy(), y[:, head.outputs].numpy()
        if head.multi_label:
            cuts = np.asarray(thresholds.get(head.name, [0.5] * len(head.classes)))
            predicted = part >= cuts
            per_tag = {}
            for k, tag in enumerate(head.classes):
                positive = target[:, k] > 0
                tp = float((predicted[:, k] & positive).sum())
                precision = tp / max(predicted[:, k].sum(), 1)
                recall = tp / max(positive.sum(), 1)
                per_tag[tag] = {"ap": average_precision(part[:, k], positive), "precision": precision,
                                "recall": recall, "f1": 2 * tp / max(predicted[:, k].sum() + positive.sum(), 1),
                                "support": int(positive.sum()), "threshold": float(cuts[k])}
            out[head.name] = {"kind": head.kind, "score": mean_average_precision(part, target), "score_name": "mAP",
                              "map": mean_average_precision(part, target), "per_tag": per_tag,
                              "macro_f1": float(np.mean([t["f1"] for t in per_tag.values()])), "n": len(part)}
            continue
        mask = target[:, 0] != MISSING
        metrics = classification_metrics(target[mask].argmax(1), part[mask].argmax(1), list(head.classes))
        out[head.name] = {"kind": head.kind, "score": metrics["accuracy"], "score_name": "accuracy", **metrics,
                          "n": int(mask.sum()), "unlabelled": int((~mask).sum())}
    return out


class TagFits(HeadFits):
    """One logistic regression per tag (sigmoid, binary cross-entropy) on the same standardised features,
    fitted side by side like HeadFits' folds. `labels` are images × tags of 0/1."""

    @staticmethod
    def image_losses(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1)

    @torch.no_grad()
    def validation_probs(self, val_sets: list[torch.Tensor]) -> torch.Tensor:
        """images × tags: each image of val_sets[f] scored by fit f, which did not see it."""
        return out_of_fold(self.logits().sigmoid(), val_sets)


class MultiTaskObjective(Task):
    """The sum of the tasks' losses (each weighted, 1 by default) on the shared features: one backward pass
    trains every head and the layers they share."""

    def __init__(self, layout: TaskLayout, weights: dict | None = None, label_smoothing: float = 0.0):
        self.layout = layout
        self.weights = {head.name: float((weights or {}).get(head.name, 1.0)) for head in layout}
        self.label_smoothing = label_smoothing

    def step(self, batch: Batch, features: torch.Tensor, head: torch.nn.Module) -> dict:
        logits = head(features)
        losses = task_losses(logits, batch.labels, self.layout, self.label_smoothing)
        loss = sum(self.weights[name] * value for name, value in losses.items() if value is not None)
        return {"loss": loss, "logits": logits, "task_losses": losses}

    def batch_metrics(self, out: dict, batch: Batch) -> tuple[float, float]:
        logits = out["logits"].detach()
        losses = task_losses(logits, batch.labels, self.layout)
        scores = task_scores(self.layout.probabilities(logits).cpu(), batch.labels.cpu(), self.layout)
        loss = sum(self.weights[n] * v.item() for n, v in losses.items() if v is not None)
        return loss, _mean_score(scores) * len(batch.idx)


def _mean_score(scores: dict) -> float:
    known = [s for s in scores.values() if s is not None]
    return float(np.mean(known)) if known else 0.0


def has_tasks(config) -> bool:
    """Whether the run's dataset came with a labels table (then it trains a head per task)."""
    try:
        return bool(load_dataset(config.dataset_dir).tasks)
    except ValueError:
        return False  # the fit itself reports a missing or damaged dataset


def load_task_data(config, layout: TaskLayout | None = None) -> tuple[RunData, TaskLayout, torch.Tensor]:
    """A labels-table dataset's images, its task layout, the targets, and a held-out split stratified on the
    first single-label task (images without that label form a stratum of their own)."""
    dataset = load_dataset(config.dataset_dir)
    if not dataset.tasks:
        raise ValueError(f"{dataset.name}: not a dataset with a labels table")
    if config.val_dataset_dir:
        raise ValueError("a multi-task run validates on its own images: leave the separate validation set out")
    only = config.only_task  # one task of the table: a separate model, to compare with sharing
    tasks = [t for t in dataset.tasks if t["name"] == only] if only else dataset.tasks
    if not tasks:
        raise ValueError(f"{dataset.name}: no task named {only!r}")
    layout = layout or TaskLayout(tasks)
    targets = layout.targets(dataset.items)
    strata = stratification_labels(targets, layout)
    train_idx, val_idx = stratified_split(strata, config.val_fraction, config.seed)
    data = RunData(layout.output_names(), dataset.paths(), strata, train_idx, val_idx,
                   f"{config.val_fraction:.0%} held out", {"kind": "holdout", "fraction": config.val_fraction,
                                                           "seed": config.seed})
    return data, layout, targets


def stratification_labels(targets: torch.Tensor, layout: TaskLayout) -> list[int]:
    single = [head for head in layout if not head.multi_label]
    if single:
        head = single[0]
        part = targets[:, head.outputs]
        return [int(row.argmax()) if row[0] != MISSING else len(head.classes) for row in part]
    head = layout.heads[0]  # multi-label only: stratify on each image's rarest tag (or none)
    part = targets[:, head.outputs]
    frequency = part.sum(0)
    return [int(torch.where(row > 0, frequency, torch.full_like(frequency, math.inf)).argmin())
            if row.any() else len(head.classes) for row in part]


def probe_tasks(fit, feats: torch.Tensor, train_masks: torch.Tensor, val_sets: list[torch.Tensor], epochs: int,
                l2_at, label_smoothing: float) -> None:
    """The probe phase of a multi-task fit: per single-label task a HeadFits on the images with its label, per
    multi-label task a TagFits; each epoch one step down the shared L2 path, every head copied into the
    model's Linear, and one epoch_end with the tasks' losses and scores (out-of-fold)."""
    layout, y = fit.layout, fit.targets.cpu()
    fitted = {}
    for head in layout:
        if head.multi_label:
            fitted[head.name] = (TagFits(feats, y[:, head.outputs], train_masks, len(head.classes)), None)
        else:
            rows = has_label(y, head).nonzero().flatten()
            if len(rows) == 0:
                continue
            where = torch.full((len(y),), -1, dtype=torch.long)
            where[rows] = torch.arange(len(rows))
            sub_val = [where[v][where[v] >= 0] for v in val_sets]
            fitted[head.name] = (HeadFits(feats[rows], y[rows][:, head.outputs].argmax(1), train_masks[:, rows],
                                          len(head.classes)), (rows, sub_val))
    classifier = fit.model.get_classifier()
    for k in range(epochs):
        t_epoch = time.time()
        val_probs = torch.zeros(len(y), layout.width)
        train_probs = torch.zeros(len(y), layout.width)
        for head in layout:
            if head.name not in fitted:
                continue
            fits, subset = fitted[head.name]
            fits.step(l2_at(k), label_smoothing)
            piece = torch.nn.Linear(feats.shape[1], len(head.classes))
            fits.copy_to(piece)
            with torch.no_grad():
                classifier.weight[head.outputs] = piece.weight.to(classifier.weight.device)
                classifier.bias[head.outputs] = piece.bias.to(classifier.bias.device)
                if subset is None:
                    val_probs[:, head.outputs] = fits.validation_probs(val_sets)
                    train_probs[:, head.outputs] = fits.logits()[-1].sigmoid().cpu()
                else:
                    rows, sub_val = subset
                    val_probs[rows, head.outputs] = fits.validation_log_probs(sub_val).exp()
                    train_probs[rows, head.outputs] = fits.logits()[-1].softmax(-1).cpu()
        fit.progress.epoch += 1
        fit.progress.step += PROBE_ITERS_PER_EPOCH
        kept_train = train_masks[-1]
        train = fit.task_summary(train_probs[kept_train], y[kept_train])
        val = fit.task_summary(val_probs[fit.val_idx], y[fit.val_idx])
        fit.progress.val_probs_at[fit.progress.epoch] = val_probs[fit.val_idx]
        fit.emit("epoch_end", phase="probe", epoch=fit.progress.epoch, step=fit.progress.step, l2=l2_at(k),
                 train_loss=train["loss"], train_acc=train["score"], val_loss=val["loss"], val_acc=val["score"],
                 tasks={name: {"train_loss": train["tasks"][name]["loss"], "train_score": train["tasks"][name]["score"],
                               "val_loss": val["tasks"][name]["loss"], "val_score": val["tasks"][name]["score"]}
                        for name in val["tasks"]},
                 seconds=time.time() - t_epoch, elapsed=time.time() - fit.progress.t0,
                 images_per_s=len(fit.train_idx) / max(time.time() - t_epoch, 1e-9))
        if fit.stop_phase:
            break


def summary_from_probs(probs: torch.Tensor, y: torch.Tensor, layout: TaskLayout, weights: dict) -> dict:
    """{"loss", "score", "tasks": {name: {"loss", "score"}}} of probabilities against targets: the weighted sum
    of the tasks' losses and the mean of their scores (what the fit loop's val_loss and val_acc hold)."""
    logits = _logits_of(probs, layout)
    losses = task_losses(logits, y, layout)
    scores = task_scores(probs, y, layout)
    tasks = {name: {"loss": None if losses[name] is None else losses[name].item(), "score": scores[name]}
             for name in losses}
    loss = sum(weights.get(n, 1.0) * t["loss"] for n, t in tasks.items() if t["loss"] is not None)
    return {"loss": float(loss), "score": _mean_score(scores), "tasks": tasks}


def _logits_of(probs: torch.Tensor, layout: TaskLayout) -> torch.Tensor:
    """Logits that give back `probs` (log-probabilities per single-label head, log-odds per tag)."""
    p = probs.clamp(1e-7, 1 - 1e-7)
    out = p.log()
    for head in layout:
        if head.multi_label:
            out[:, head.outputs] = p[:, head.outputs].logit()
    return out


def task_view(metrics: dict, predictions: list[dict], task: str) -> tuple[dict, list[dict]]:
    """One task of a multi-task run's metrics and predictions, in the shape of a single-task run's (accuracy,
    per-class table, confusion matrix; per-tag scores for a multi-label task), for the pages that show one."""
    measured = metrics["tasks"][task]
    view = {k: v for k, v in metrics.items() if k != "tasks"}
    view.update(val_acc=measured["score"], macro_f1=measured.get("macro_f1"), score_name=measured.get("score_name"))
    if measured["kind"] == "multi-label":
        view.update(classes=list(measured["per_tag"]), confusion=None,
                    per_class={tag: {k: m[k] for k in ("precision", "recall", "f1", "support")}
                               for tag, m in measured["per_tag"].items()})
    else:
        view.update(classes=measured["classes"], confusion=measured["confusion"], per_class=measured["per_class"])
    return view, [row for row in predictions if row.get("task") == task]


def task_summary_rows(metrics: dict) -> list[dict]:
    """One row per task: its kind, headline score and on how many images, for a table."""
    return [{"task": name, "kind": m["kind"], "measure": m.get("score_name"), "score": m.get("score"),
             "macro F1": m.get("macro_f1"), "images": m.get("n")} for name, m in metrics.get("tasks", {}).items()]


def audit_tasks(dataset, few: int = 5, imbalance: float = 3.0) -> list[dict]:
    """Per task of a labels-table dataset: images per class (or tag), how many lack a label, the largest ÷
    smallest class, and warnings in words (a class with few images, a strong imbalance, missing labels)."""
    out = []
    for task in dataset.tasks:
        counts = {c: 0 for c in task["classes"]}
        missing = 0
        for item in dataset.items:
            value = item.get("tasks", {}).get(task["name"])
            if value is None:  # a multi-label task's empty cell is a label: none of its tags
                missing += 1
                continue
            for v in value if isinstance(value, list) else [value]:
                counts[v] = counts.get(v, 0) + 1
        present = [n for n in counts.values() if n]
        ratio = max(present) / min(present) if present else 0.0
        warnings = []
        if missing:
            warnings.append(f"{missing} image{'s' if missing != 1 else ''} without a label for {task['name']}: "
                            "they train the other tasks only")
        thin = [c for c, n in counts.items() if n < few]
        if thin:
            warnings.append(f"{task['name']}: {len(thin)} {'tag' if task['kind'] == 'multi-label' else 'class'}"
                            f"{'s' if len(thin) != 1 else ''} with fewer than {few} images "
                            f"({', '.join(thin[:3])}{'…' if len(thin) > 3 else ''}): expect shaky scores for them")
        if ratio >= imbalance:
            warnings.append(f"{task['name']}: the largest class has {ratio:.0f}× the images of the smallest")
        out.append({"task": task["name"], "kind": task["kind"], "counts": counts, "missing": missing,
                    "imbalance_ratio": ratio, "warnings": warnings})
    return out
