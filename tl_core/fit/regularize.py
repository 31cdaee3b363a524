"""L2-SP: while layers fine-tune, a pull of their weights back toward where the phase began (the pretrained
body and the probe's head), instead of toward zero as weight decay pulls (Li et al., 2018, "Explicit inductive
bias for transfer learning"). With few images a class, the pretrained weights are the best prior there is.
A loop callback: it adds alpha/2 · ‖θ − θ₀‖² to the loss of each fine-tune batch ("after_loss")."""
from __future__ import annotations

import torch

from .callbacks import Callback


class L2SP(Callback):
    """Adds alpha/2 · Σ‖θ − θ₀‖² over the trainable weight tensors (not norms or biases) to each fine-tune loss."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.start: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def on_phase_start(self, info, fit):
        if info.get("phase") != "finetune":
            return
        self.start = [(p, p.detach().clone()) for p in fit.model.parameters() if p.requires_grad and p.ndim > 1]

    def on_after_loss(self, info, fit):
        if fit.progress.phase != "finetune" or not self.start or self.alpha <= 0:
            return
        pull = sum((p - p0).pow(2).sum() for p, p0 in self.start)
        info["out"]["loss"] = info["out"]["loss"] + 0.5 * self.alpha * pull
