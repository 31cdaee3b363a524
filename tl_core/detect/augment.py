"""Box-aware augmentation of the decoded square pictures (torchvision.transforms.v2 moves the boxes with them).

"light": left-right flips, zoom in (a random crop that keeps whole objects, RandomIoUCrop) or out
(RandomZoomOut), back to the input size: flips and scale jitter; "crop": the same without flips (for things
with a left and a right); "strong": plus colour jitter. Crops can cut boxes: SanitizeBoundingBoxes drops the
ones left degenerate, so every target stays valid. "none": the pictures as decoded.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def pipeline(preset: str, size: int) -> v2.Compose | None:
    """The training transform of `preset`, or None for "none"."""
    if preset == "none":
        return None
    steps = [v2.RandomHorizontalFlip(0.5)] if preset in ("light", "strong") else []
    steps += [v2.RandomChoice([v2.Identity(), v2.RandomIoUCrop(), v2.RandomZoomOut(fill=114, side_range=(1.0, 1.6))]),
              v2.Resize((size, size), antialias=True)]
    if preset == "strong":
        steps.append(v2.ColorJitter(0.3, 0.3, 0.3, 0.05))
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


def apply(transform: v2.Compose | None, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """One picture (3×S×S uint8) and its target, transformed together."""
    if transform is None:
        return image, target
    size = image.shape[-2:]
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(size))
    out_image, out = transform(tv_tensors.Image(image), {"boxes": boxes, "labels": target["labels"]})
    return out_image.as_subclass(torch.Tensor), {"boxes": out["boxes"].as_subclass(torch.Tensor).float(),
                                                 "labels": out["labels"]}
