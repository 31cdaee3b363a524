"""Run a model as a frozen prefix, computed once per image, and a trainable rest.

When the first k stages of a backbone are frozen and see no augmentation, their output for an
image never changes: computing it once and training only the rest on those activations saves
the prefix's forward pass at every epoch. This works for architectures whose `forward_features`
is "stem modules → one stage container → tail" (timm's EfficientNet, MobileNetV3, ConvNeXt);
tests check that the split forward equals the full one. Other models train the usual way,
their frozen layers still without autograd.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
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


def stage_split_point(model: nn.Module, groups, trainable: set[str]) -> int | None:
    """k when every group before the first trainable one is the stem or stages 0..k-1, else None."""
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
