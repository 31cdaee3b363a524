"""What a freeze plan costs on this computer, measured on one small batch: the one-off pass through the
frozen layers before the first epoch, and the seconds of an epoch after it.

The estimate follows what a run does (tl_core/fit/loop.py): a head-only run passes every image through the
backbone once and then fits the head in milliseconds; a run that trains layers first computes the frozen
features for the probe, runs a stage-shaped frozen prefix once (tl_core/models/frozen_prefix.py), and then each
epoch trains only the rest and validates. Every timed call is warmed up first: a first call allocates and
was measured ~10× slower than the steady state (bench/plan_cost.py, bench/RESULTS.md).
"""
from __future__ import annotations

import copy
import time

import torch

from ..models import layers
from ..models.backbones import architecture
from ..models.frozen_prefix import MULTILAYER_SPLITS, PrefixSplit, stage_split_point
from ..fit.strategy import channels_last_helps

TIMING_BATCH = 8


def estimate(model: torch.nn.Module, image_size: int, trainable: set[str], bn_policy: str, n_train: int,
             n_val: int, augment: str = "none", batch: int = TIMING_BATCH, features: str = "last") -> dict:
    """{"once_s": the pass through the frozen layers before the first epoch, "epoch_s": an epoch after it}.
    `features`: what the run's head reads; a multi-layer head reads the frozen stages too, which are cached with
    the prefix for the bodies MultiLayerSplit knows (others run the whole body every epoch). The model is
    copied: the caller's stays as it was."""
    timed = copy.deepcopy(model)
    groups = layers.layer_groups(timed)
    trainable = set(trainable)
    layers.apply_freeze(timed, groups, trainable, bn_policy)
    images = torch.randn(batch, 3, image_size, image_size)
    n_images = n_train + n_val
    if channels_last_helps(architecture(timed), torch.device("cpu"), n_images):  # as the run lays them out
        timed = timed.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward_s = _forward_seconds(timed, images)
    if trainable == {groups[-1].name}:
        if augment == "none":  # features once, then the probe: milliseconds an epoch
            return {"once_s": forward_s * n_images, "epoch_s": 0.0}
        return {"once_s": 0.0, "epoch_s": forward_s * n_images}  # augmented images pass again every epoch
    # A multi-layer model caches the same prefix (MultiLayerSplit) when its body allows: timed as the plain one.
    multilayer_cached = features != "multi-layer" or type(timed).__name__ in MULTILAYER_SPLITS
    cached = augment == "none" and bn_policy != "train" and multilayer_cached
    k = stage_split_point(timed, groups, trainable) if cached else None
    once_s = forward_s * n_images  # the probe's features
    if k is None:
        return {"once_s": once_s, "epoch_s": _train_seconds(timed, images, bn_policy) * n_train + forward_s * n_val}
    split = PrefixSplit(timed, k)
    timed.eval()
    activations = split.prefix(images)
    prefix_s = _seconds(lambda: split.prefix(images)) / batch
    with split.rest() as rest:
        rest_forward_s = _forward_seconds(rest, activations)
        rest_train_s = _train_seconds(rest, activations, bn_policy)
    return {"once_s": once_s + prefix_s * n_images, "epoch_s": rest_train_s * n_train + rest_forward_s * n_val}


def _seconds(call) -> float:
    """Seconds of `call()`, the second of two calls: the first allocates and warms caches."""
    call()
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _forward_seconds(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return _seconds(lambda: model(inputs)) / len(inputs)


def _train_seconds(model: torch.nn.Module, inputs: torch.Tensor, bn_policy: str) -> float:
    """Forward and backward seconds per image, as a training step runs them (the optimiser's step is small)."""
    layers.set_train_mode(model, bn_policy)

    def step():
        model(inputs).logsumexp(1).mean().backward()
        model.zero_grad(set_to_none=True)

    return _seconds(step) / len(inputs)
