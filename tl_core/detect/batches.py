"""A box dataset as tensors: every picture decoded once and stretched to a square input size, its boxes scaled
alike (clipped to the picture; degenerate boxes and unknown classes left out, as the audit lists them).

Stretching keeps the boxes exact under a per-axis scale, so a prediction maps back to the original picture
by the inverse scale, and export sees one fixed input shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tl_core.data.datasets.images import ImageRefused, open_image
from tl_core.detect.formats import BoxSet

MIN_BOX_PX = 1.0  # at the input size: a box thinner than a pixel teaches nothing


@dataclass
class BoxTensors:
    """Pictures (N×3×S×S uint8), targets (boxes in input pixels, class indices) and the per-picture scales."""

    pixels: torch.Tensor
    targets: list[dict]
    scales: list[tuple[float, float]]  # (S / width, S / height) of each picture
    files: list[str]
    skipped: list[dict]  # pictures that could not be read now, with the reason (never silently)


def resize_picture(picture: Image.Image, size: int) -> torch.Tensor:
    """3×S×S uint8 tensor of `picture` stretched to S×S (bilinear, as training saw it)."""
    square = picture.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1)


def load(boxset: BoxSet, size: int, indices: list[int] | None = None) -> BoxTensors:
    """The pictures `indices` of `boxset` (all by default) at `size` px with their usable boxes."""
    indices = range(len(boxset.images)) if indices is None else indices
    index_of = {name: k for k, name in enumerate(boxset.classes)}
    pixels, targets, scales, files, skipped = [], [], [], [], []
    for i in indices:
        image = boxset.images[i]
        try:
            picture = open_image(boxset.path(image), image["file"])
        except (ImageRefused, OSError) as error:
            skipped.append({"name": image["file"], "reason": str(error)})
            continue
        sx, sy = size / picture.width, size / picture.height
        pixels.append(resize_picture(picture, size))
        targets.append(usable_targets(image, index_of, sx, sy, size))
        scales.append((sx, sy))
        files.append(image["file"])
    stacked = torch.stack(pixels) if pixels else torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return BoxTensors(stacked, targets, scales, files, skipped)


def usable_targets(image: dict, index_of: dict[str, int], sx: float, sy: float, size: int) -> dict:
    """{"boxes": K×4 float, "labels": K int64} at the input size: clipped, degenerate and unknown left out."""
    boxes, labels = [], []
    for (x0, y0, x1, y1), label in zip(image["boxes"], image["labels"]):
        if label not in index_of:
            continue
        box = [min(max(x0 * sx, 0.0), size), min(max(y0 * sy, 0.0), size),
               min(max(x1 * sx, 0.0), size), min(max(y1 * sy, 0.0), size)]
        if box[2] - box[0] < MIN_BOX_PX or box[3] - box[1] < MIN_BOX_PX:
            continue
        boxes.append(box)
        labels.append(index_of[label])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded hold-out of pictures: (train, validation), each at least one picture."""
    if n < 2:
        raise ValueError(f"{n} usable picture(s): a detector needs at least 2 (one to train, one to validate)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])
