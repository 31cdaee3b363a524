"""Run a model as a frozen prefix, computed once per image, and a trainable rest.

When the first k stages of a backbone are frozen and see no augmentation, their output for an
image never changes: computing it once and training only the rest on those activations saves
the prefix's forward pass at every epoch. This works for architectures whose `forward_features`
is "stem modules → one stage container → tail" (timm's EfficientNet, MobileNetV3, ConvNeXt);
tests check that the split forward equals the full one. A multi-layer model (EfficientNet and MobileNetV3
bodies) caches its frozen stages' pooled outputs too (MultiLayerSplit). Other models train the usual way,
their frozen layers still without autograd.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# timm class name → (stage container attribute, stem modules called before it in forward_features)
_LAYOUTS = {
    "EfficientNet": ("blocks", ("conv_stem", "bn1")),
    "MobileNetV3": ("blocks", ("conv_stem", "bn1")),
    "ConvNeXt": ("stages", ("stem",)),
}


class PrefixSplit:
    """The model cut after its first `k` stages; `prefix(x)` runs them, `with split.rest():` runs the others."""

    def __init__(self, model: nn.Module, k: int):
        container_name, stem_names = _LAYOUTS[type(model).__name__]
        self.model = model
        self.k = k
        self.container_name = container_name
        self.stem_names = stem_names
        self.container = getattr(model, container_name)
        self.stem = [getattr(model, name) for name in stem_names]  # held here: rest() swaps them out

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.stem:
            x = module(x)
        return self.container[:self.k](x)

    @contextmanager
    def rest(self):
        """Within this block, model(activations) runs only the stages after the prefix, the tail and the head."""
        saved = dict(zip(self.stem_names, self.stem))
        try:
            for name in self.stem_names:
                setattr(self.model, name, nn.Identity())
            setattr(self.model, self.container_name, self.container[self.k:])
            yield self.model
        finally:
            for name, module in saved.items():
                setattr(self.model, name, module)
            setattr(self.model, self.container_name, self.container)


    def features(self, activations: torch.Tensor) -> torch.Tensor:
        """The pooled features the head reads, from the prefix's activations."""
        with self.rest() as rest:
            return rest.forward_head(rest.forward_features(activations), pre_logits=True)


class MultiLayerSplit:
    """The same cut for a multi-layer model (tl_core.models.multilayer), whose head also reads the pooled outputs
    of the frozen stages: those are fixed per image too, so `prefix(x)` returns them with the activations, and
    `features((activations, pooled))` runs the other stages and puts the columns in MultiLayerModel's order."""

    def __init__(self, model: nn.Module, k: int):
        from .multilayer import GRID, GRID_FROM
        self.model, self.body, self.k, self.grid, self.grid_from = model, model.body, k, GRID, GRID_FROM
        self.container_name = "blocks"
        self.container = self.body.blocks
        self.means = None  # columns of the prefix's global means (the rest of `pooled` are its grids)

    def _pool(self, outputs: list[torch.Tensor], first_index: int) -> tuple[list, list]:
        means = [t.mean((2, 3)) for t in outputs]
        grids = [F.adaptive_avg_pool2d(t, self.grid).flatten(1)
                 for i, t in enumerate(outputs, start=first_index) if i >= self.grid_from]
        return means, grids

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body.bn1(self.body.conv_stem(x))
        outputs = [x]  # forward_intermediates' index 0 is the stem, then one per block stage
        for block in self.container[:self.k]:
            x = block(x)
            outputs.append(x)
        means, grids = self._pool(outputs, 0)
        self.means = sum(t.shape[1] for t in means)
        return x, torch.cat(means + grids, 1)

    def features(self, parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, pooled = parts
        outputs = []
        for block in self.container[self.k:]:
            x = block(x)
            outputs.append(x)
        means, grids = self._pool(outputs, self.k + 1)
        if hasattr(self.body, "conv_head") and type(self.body).__name__ == "EfficientNet":
            x = self.body.bn2(self.body.conv_head(x))  # EfficientNet's tail is in forward_features, MobileNetV3's in its head
        final = self.body.forward_head(x, pre_logits=True)
        return torch.cat([pooled[:, :self.means], *means, pooled[:, self.means:], *grids, final], 1)


def split_for(model: nn.Module, k: int):
    """The split of `model` after its first `k` stages (see stage_split_point)."""
    return MultiLayerSplit(model, k) if hasattr(model, "body") else PrefixSplit(model, k)


MULTILAYER_SPLITS = ("EfficientNet", "MobileNetV3")  # bodies whose multi-layer features MultiLayerSplit rebuilds


def stage_split_point(model: nn.Module, groups, trainable: set[str]) -> int | None:
    """k when every group before the first trainable one is the stem or stages 0..k-1, else None."""
    if hasattr(model, "body"):  # a multi-layer model: its body's layout, when MultiLayerSplit knows it
        if type(model.body).__name__ not in MULTILAYER_SPLITS or not getattr(model, "_extra_blocks", False):
            return None
        model = model.body
    layout = _LAYOUTS.get(type(model).__name__)
    if layout is None or getattr(model, "grad_checkpointing", False):
        return None
    container_name = layout[0]
    first = next((g for g in groups if g.name in trainable), None)
    if first is None or first.is_head:
        return None
    prefix_names = [g.name for g in groups[:first.index]]
    stages = [n for n in prefix_names if n.startswith(container_name + ".")]
    if not stages or any(n not in ("stem", *stages) for n in prefix_names):
        return None
    if stages != [f"{container_name}.{i}" for i in range(len(stages))]:
        return None
    return len(stages)
