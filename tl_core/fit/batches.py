"""Where a batch's inputs come from: the three speed paths of the fit loop behind one interface.

- PixelSource: decoded uint8 images, augmented and normalised per batch; the whole body runs.
- PrefixSource: the frozen stage-shaped prefix ran once (no augmentation, frozen BatchNorm); its
  activations are cached and only the rest of the model runs per batch.
- FeatureSource: pooled features of a frozen body, computed once and cached on disk; nothing of
  the body runs (the probe, and evaluation while the body is untouched).
Each gives `batch(idx, train)` and `features(inputs)`: the pooled features the head reads.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..data.augment import normalize
from ..models.frozen_prefix import MultiLayerSplit, PrefixSplit, split_for, stage_split_point
from ..ops.storage import atomic_file
from .tasks import Batch

ACTIVATION_CACHE_LIMIT = 3 << 30  # bytes of cached frozen-prefix activations, beyond which the prefix reruns


class PixelSource:
    """Decoded images; `to_device` normalises them on the device (and in the memory layout the model wants)."""

    def __init__(self, model, pixels: torch.Tensor, labels: torch.Tensor, to_device, augment=None):
        self.model, self.pixels, self.labels = model, pixels, labels
        self.to_device, self.augment = to_device, augment

    def batch(self, idx: torch.Tensor, train: bool = False) -> Batch:
        images = self.pixels[idx]
        if train and self.augment is not None:
            images = self.augment(images)
        return Batch(idx, self.to_device(images), self.labels[idx])

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(inputs), pre_logits=True)


class PrefixSource:
    """Activations after the frozen prefix, computed once; the rest of the model runs on them. A multi-layer
    model's inputs are a pair: the activations and the frozen stages' pooled outputs (MultiLayerSplit)."""

    def __init__(self, split: PrefixSplit | MultiLayerSplit, activations, labels: torch.Tensor):
        self.split, self.activations, self.labels = split, activations, labels

    def batch(self, idx: torch.Tensor, train: bool = False) -> Batch:
        if isinstance(self.activations, tuple):
            return Batch(idx, tuple(part[idx] for part in self.activations), self.labels[idx])
        return Batch(idx, self.activations[idx], self.labels[idx])

    def features(self, inputs) -> torch.Tensor:
        return self.split.features(inputs)


class FeatureSource:
    """Pooled features of the frozen body: the head reads them as they are."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features_all, self.labels = features, labels

    def batch(self, idx: torch.Tensor, train: bool = False) -> Batch:
        return Batch(idx, self.features_all[idx], self.labels[idx])

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


@torch.no_grad()
def prefix_source(model, groups, trainable: set[str], pixels: PixelSource, batch_size: int, autocast,
                  on_progress) -> PrefixSource | None:
    """Run a stage-shaped frozen prefix once over every image; None when the model has none or the
    activations would pass ACTIVATION_CACHE_LIMIT. (The caller checks augmentation and BatchNorm.)"""
    k = stage_split_point(model, groups, trainable)
    if k is None:
        return None
    split = split_for(model, k)
    model.eval()
    chunks, size = [], 0
    for start in range(0, len(pixels.pixels), batch_size):
        with autocast():
            chunk = split.prefix(pixels.to_device(pixels.pixels[start:start + batch_size]))
        chunk = chunk if isinstance(chunk, tuple) else (chunk,)
        chunks.append(chunk)
        size += sum(part.numel() * part.element_size() for part in chunk)
        if size > ACTIVATION_CACHE_LIMIT:
            return None
    on_progress(f"the frozen layers run once: {len(pixels.pixels)} images' activations after stage {k} cached "
                f"({size / 2**20:.0f} MiB)")
    parts = tuple(torch.cat(part) for part in zip(*chunks))
    return PrefixSource(split, parts if len(parts) > 1 else parts[0], pixels.labels)


@torch.no_grad()  # not inference_mode: the probe's backward needs these as ordinary tensors
def feature_source(pixels: PixelSource, cache: Path, batch_size: int, on_batch, on_reuse) -> FeatureSource:
    """Pooled features of every image, computed once and cached on disk at `cache` (see feature_key)."""
    if cache.exists():
        on_reuse("reusing frozen features computed by an earlier run")
        features = torch.from_numpy(np.load(cache)).to(pixels.labels.device)
        return FeatureSource(features, pixels.labels)
    pixels.model.eval()
    chunks, n = [], len(pixels.pixels)
    for start in range(0, n, batch_size):
        # fp32, not autocast: computed once, and bf16 features cost the probe accuracy
        # (Fashion-MNIST on an H100: 78.8 % test with bf16 features, 80.6 % with fp32 on a CPU).
        chunks.append(pixels.features(pixels.to_device(pixels.pixels[start:start + batch_size])).float())
        on_batch(start // batch_size, min(start + batch_size, n), n)
    features = torch.cat(chunks)
    with atomic_file(cache) as f:
        np.save(f, features.cpu().numpy())
    return FeatureSource(features, pixels.labels)


def feature_key(backbone: str, weights: str, preprocess: dict, paths: list) -> str:
    """What frozen features depend on: backbone, weights (a file by path, size and time), preprocessing, images."""
    if os.path.isfile(weights):
        stat = os.stat(weights)
        weights = f"{os.path.abspath(weights)}:{stat.st_size}:{stat.st_mtime_ns}"
    parts = [backbone, weights, repr(sorted(preprocess.items())), *map(str, paths)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def normalizer(preprocess: dict, device: torch.device, channels_last: bool):
    """images uint8 → normalised float on `device`, in the memory layout the model wants."""
    def to_device(images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu" and device.type == "cuda":
            images = images.pin_memory()
        x = normalize(images.to(device, non_blocking=True), preprocess["mean"], preprocess["std"])
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return to_device
