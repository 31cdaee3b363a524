"""What one training step computes: the Task seam of the fit loop.

A task turns a batch and the body's pooled features into {"loss", "logits", ...}, and owns any
trainable parts besides the backbone and its head (`modules()`: a domain head, a second task's
head), which the loop optimises with the head's learning rate. Plain classification is the
default; domain adaptation or multi-task heads are new tasks, not branches in the loop
(the idea of timm's TrainingTask).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Batch:
    """One batch as the loop sees it: dataset indices, model inputs (images or cached activations), labels."""

    idx: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor


class Task:
    """The default is plain classification; subclasses change `step` and add `modules`."""

    # Per-class weights of the classification loss (a tensor on the loop's device), set by the loop when
    # the classes are weighted (tl_core.fit.imbalance); None: every image counts the same.
    class_weight: torch.Tensor | None = None
    # Whether the run may keep the probe instead of fine-tuning's weights (and refit it: Fit.refit_kept_probe);
    # False for a task that keeps fine-tune weights of its own choosing (DANN keeps where its warm-up ends).
    may_keep_probe = True

    def modules(self) -> list[nn.Module]:
        """Trainable parts the task adds; they train at the head's learning rate."""
        return []

    def step(self, batch: Batch, features: torch.Tensor, head: nn.Module) -> dict:
        raise NotImplementedError

    def batch_metrics(self, out: dict, batch: Batch) -> tuple[float, torch.Tensor | float]:
        """(the batch's loss without label smoothing, how many it got right) for the training curves; the count
        may stay a tensor on the device, so the loop need not wait for it."""
        logits = out["logits"].detach().float()
        return F.cross_entropy(logits, batch.labels).item(), (logits.argmax(1) == batch.labels).sum()


class Classification(Task):
    """Cross-entropy of the head's logits, with label smoothing, and per-class weights when given."""

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        self.label_smoothing = label_smoothing
        self.class_weight = weight

    def step(self, batch: Batch, features: torch.Tensor, head: nn.Module) -> dict:
        logits = head(features)
        loss = F.cross_entropy(logits.float(), batch.labels, weight=self.class_weight,
                               label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}
