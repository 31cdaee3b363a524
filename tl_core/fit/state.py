"""The fit's state, as three objects with their own few methods, instead of a loop that carries every
fact as an attribute of its own:

- Net: the model and its layer groups: which groups train, what the head reads, how an image is prepared;
- Sources: where batches come from: the images, the frozen features once the probe computed them, and the
  fine-tune phase's own source (cached prefix activations, or the images);
- Progress: where the run is: epochs and optimiser steps so far, the phase, the validation probabilities
  the loop already computed (by epoch), and the clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..config import RunConfig
from ..models import backbones, layers, multilayer


@dataclass
class Net:
    """The model, its layer groups and the plan of which train; `counts` once the plan is applied."""

    model: torch.nn.Module
    preprocess: dict  # the backbone's input geometry and normalisation (preprocess.json)
    feature_kind: str  # what the head reads: "last" or "multi-layer" (tl_core.models.multilayer)
    groups: list = field(default_factory=list)
    trainable: set = field(default_factory=set)
    counts: dict = field(default_factory=dict)  # trainable and total parameters and groups (layers.apply_freeze)
    head_kind: str = "logistic"  # how the probe fits the head: "logistic" or "prototype" (tl_core.fit.prototypes)
    channels_last: bool = False

    @classmethod
    def build(cls, config: RunConfig, num_outputs: int) -> "Net":
        """The run's backbone with a fresh head of `num_outputs`, wrapped for multi-layer features when it reads them."""
        body = backbones.create_model(config.backbone, num_outputs, weights=config.weights)
        feature_kind = _feature_kind(config, body)
        model = multilayer.build(body, num_outputs, feature_kind)
        net = cls(model, backbones.data_config(model, config.image_size), feature_kind)
        net.plan(config.freeze)
        return net

    @property
    def size(self) -> int:
        return self.preprocess["input_size"][-1]

    @property
    def head_name(self) -> str:
        return self.groups[-1].name

    def head(self) -> torch.nn.Module:
        return self.model.get_classifier()

    def plan(self, freeze: str) -> None:
        """The layer groups, and the ones the freeze plan trains."""
        self.groups = layers.layer_groups(self.model)
        self.trainable = layers.parse_freeze(freeze, self.groups)

    def trains_on_images(self, config: RunConfig) -> bool:
        """Whether any layer but the head trains, or the images are augmented: then batches are images."""
        return self.trainable != {self.head_name} or config.augment != "none"

    def freeze(self, bn_policy: str) -> dict:
        """Apply the plan to the model (requires_grad, BatchNorm policy); the parameter counts."""
        self.counts = layers.apply_freeze(self.model, self.groups, self.trainable, bn_policy)
        return self.counts

    def to_last_layer(self, num_outputs: int, config: RunConfig, device: torch.device) -> None:
        """Drop the multi-layer wrapper: the plain model with a fresh head, its groups and frozen plan."""
        self.model = self.model.body
        self.model.reset_classifier(num_outputs)
        self.model.to(device)
        self.feature_kind = "last"
        self.plan(config.freeze)
        self.freeze(config.bn_policy)


@dataclass
class Sources:
    """Where batches come from (tl_core.fit.batches): the images, the frozen features, the phase's own."""

    pixels: object  # batches.PixelSource: every image, decoded once
    features: object = None  # batches.FeatureSource: the frozen backbone's features, once the probe computed them
    phase: object = None  # the fine-tune phase's source: cached prefix activations, or the pixels

    def for_prediction(self, trains_on_images: bool):
        """Cached features while the body is untouched, else the phase's source (or the images)."""
        if self.features is not None and not trains_on_images:
            return self.features
        return self.phase or self.pixels


@dataclass
class Progress:
    """Where the run is: epochs and steps so far (both phases count), and what was measured on the way."""

    t0: float = field(default_factory=time.time)
    epoch: int = 0
    step: int = 0
    phase: str = ""
    val_probs_at: dict = field(default_factory=dict)  # epoch → validation probabilities the loop computed

    def elapsed(self) -> float:
        return time.time() - self.t0


def _feature_kind(config: RunConfig, body: torch.nn.Module) -> str:
    """What the head reads. "auto": multi-layer features whenever the backbone has them, for every plan: the
    probe keeps them only where they validate better, and a fine-tune then starts from that probe with the
    multi-layer head attached (issue 24: a fine-tune run that read the last layer only started from a weaker
    probe than feature extraction's, and kept a worse model on every set measured)."""
    if config.features != "auto":
        return config.features
    return "multi-layer" if multilayer.supports(body) else "last"
