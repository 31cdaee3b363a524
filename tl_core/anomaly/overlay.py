"""A heat map drawn over its image (numpy and Pillow only: the app and the bundle's program use it too)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def overlay(image: Image.Image, heat: np.ndarray, threshold: float, alpha: float = 0.55) -> Image.Image:
    """The heat map over the image: clear where the score is low, red to yellow where it nears or passes the
    threshold (the colours run from half the threshold to the larger of 1.5× it and the map's peak, so a map
    looks the same whatever the backbone's distance scale). `heat` is resized to the image when it differs."""
    image = image.convert("RGB")
    if heat.shape != (image.height, image.width):
        heat = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize(image.size, Image.Resampling.BILINEAR))
    low, high = 0.5 * threshold, max(1.5 * threshold, float(heat.max()))
    level = np.clip((heat - low) / max(high - low, 1e-9), 0, 1)[..., None]
    colour = np.concatenate([np.ones_like(level), level, np.zeros_like(level)], axis=-1) * 255
    base = np.asarray(image, dtype=np.float32)
    mixed = base * (1 - alpha * level) + colour * alpha * level
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))
