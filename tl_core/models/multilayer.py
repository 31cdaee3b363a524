"""Multi-layer features: a head that reads pooled activations of every stage, not only the last (Head2Toe).

Images unlike ImageNet (grayscale, drawings, scans) are told apart by edges and textures that the early
stages see and the last one has pooled away. MultiLayerModel keeps the timm model as it is and puts one
plain Linear on the concatenation of
- each intermediate output averaged over space (every stage, from timm's `forward_intermediates`),
- the same outputs averaged over a GRID × GRID grid, from the third on (where they are still spatial),
- the model's own pooled features (what the last-layer head reads; always the last `last_features` columns).
Measured on Fashion-MNIST, 20 a class, Lite0, mean of 3 draws, 5-fold CV choosing the L2 (bench/RESULTS.md):
last layer 78.5 ± 2.1 %, + every stage 80.3 ± 1.0 %, + the 2 × 2 grid 82.8 ± 1.0 %.

The wrapper adopts the model's modules as its own children, so every parameter keeps its name
("blocks.3.0.conv_pw.weight"): layer groups, freeze plans and the state dict read as for the plain model;
only the classifier has more inputs. Everything that rebuilds a run's model calls `build`.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FEATURES

GRID = 2  # the spatial grid of the pooled intermediate outputs, beside the global average
GRID_FROM = 2  # intermediates before this one (stem, first stage) are only averaged globally


class MultiLayerModel(nn.Module):
    """`body` (a timm model) with a classifier on the pooled outputs of all its stages."""

    def __init__(self, body: nn.Module, num_classes: int):
        super().__init__()
        if not supports(body):
            raise ValueError(f"{type(body).__name__} does not expose its stages (timm forward_intermediates): "
                             f"use last-layer features")
        body.reset_classifier(0)
        for name, child in body.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "body", body)  # not registered again: its modules are this model's children
        self.pretrained_cfg = getattr(body, "pretrained_cfg", {})
        self.default_cfg = self.pretrained_cfg
        self.last_features = body.num_features
        self._extra_blocks = "extra_blocks" in inspect.signature(body.forward_intermediates).parameters
        size = (self.pretrained_cfg.get("input_size") or (3, 224, 224))[-2:]
        was_training = body.training
        body.eval()
        with torch.no_grad():
            self.num_features = self.forward_features(torch.zeros(1, 3, *size, device=_device_of(body))).shape[1]
        body.train(was_training)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated pooled features (N × num_features); the last `last_features` are the body's own."""
        options = {"extra_blocks": True} if self._extra_blocks else {}
        final, intermediates = self.body.forward_intermediates(x, **options)
        pooled = [t.mean((2, 3)) for t in intermediates]
        pooled += [F.adaptive_avg_pool2d(t, GRID).flatten(1) for t in intermediates[GRID_FROM:]]
        pooled.append(self.body.forward_head(final, pre_logits=True))
        return torch.cat(pooled, 1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def group_matcher(self, coarse: bool = False):
        return self.body.group_matcher(coarse=coarse)


def supports(model: nn.Module) -> bool:
    """Whether `model` can feed a multi-layer head (timm models with forward_intermediates)."""
    return callable(getattr(model, "forward_intermediates", None)) and callable(getattr(model, "reset_classifier", None))


def build(body: nn.Module, num_classes: int, features: str) -> nn.Module:
    """The model a run trains and predicts with: `body` as it is for "last", wrapped for "multi-layer"."""
    if features not in FEATURES:
        raise ValueError(f"features: {features!r} is not one of {', '.join(FEATURES)}")
    return MultiLayerModel(body, num_classes) if features == "multi-layer" else body


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
