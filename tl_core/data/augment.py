"""Augmentation presets that work on the decoded uint8 image tensors.

Images are decoded and resized once (datasets.decode_images); augmenting those tensors keeps
that saving, where timm's PIL pipelines would decode every image again every epoch.
The presets follow timm's train recipe in spirit: random-resized crop and flip ("light"),
plus RandAugment and random erasing ("strong"); "crop" leaves out the flip, for images whose mirror
image is another thing (digits, letters, text, anything with a left and a right).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2

from ..config import AUGMENTATIONS
from .datasets import decode_images

PRESETS = {  # the words a user chooses from
    "none": "None",
    "light": "Light: crops and flips",
    "crop": "Crops only: no flips",
    "strong": "Strong: plus colour, shape and erasing",
}
FLIPS = ("light", "strong")  # the presets that mirror images left to right
FLIP_WARNING = ("Flips mirror the images left to right: wrong for digits, letters, text or anything with a "
                "handedness (a mirrored 3 is no 3, a mirrored left hand is a right one). For those, choose "
                "\"Crops only\".")


def make_augment(preset: str, size: int):
    """A function uint8 N×3×H×W → uint8 N×3×H×W, different at every call; None for "none"."""
    if preset == "none":
        return None
    steps = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if preset == "crop":
        steps = steps[:1]
    elif preset == "strong":
        steps = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                 v2.RandAugment(num_ops=2, magnitude=9),
                 v2.RandomErasing(p=0.25, value=127)]
    elif preset != "light":
        raise ValueError(f"augmentation preset {preset!r} is not one of {', '.join(AUGMENTATIONS)}")
    per_image = v2.Compose(steps)

    def augment(batch: torch.Tensor) -> torch.Tensor:
        # One draw per image: applying v2 to the whole batch would crop every image alike.
        return torch.stack([per_image(image) for image in batch])

    return augment


def normalize(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images → float, scaled and normalised with the backbone's mean and std."""
    mean = torch.as_tensor(mean, device=batch.device).view(1, -1, 1, 1) * 255
    std = torch.as_tensor(std, device=batch.device).view(1, -1, 1, 1) * 255
    return (batch.float() - mean) / std


def decode(paths, size: int) -> torch.Tensor:
    """Images decoded as training decodes them: uint8 N×3×S×S (for a preview of the augmentation)."""
    return decode_images([Path(path) for path in paths], size)


def augmented(pixels: torch.Tensor, preset: str) -> list:
    """One random draw of `preset` on decoded images, as H×W×3 uint8 arrays a page can show."""
    augment = make_augment(preset, pixels.shape[-1])
    batch = augment(pixels) if augment is not None else pixels
    return [image.permute(1, 2, 0).numpy() for image in batch]
