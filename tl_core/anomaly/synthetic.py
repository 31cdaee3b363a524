"""Realistic synthetic defects on real textures and a drawn object, written in the MVTec AD layout.

For tests and the bench, where no licensed defect data set is at hand. Good images are random crops of
scikit-image's texture photographs (brick, grass, gravel; public domain) or renderings of a washer-like part
in slightly varied pose and light. Defects are pasted with their exact masks: scratches (thin curved lines),
stains (soft tinted blobs), holes (dark ellipses with a rim) and foreign patches (a piece of another texture).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SOURCES = ("brick", "grass", "gravel", "washer")
DEFECTS = ("scratch", "stain", "hole", "foreign")


def _texture(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]


def good_image(source: str, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """One good image of `source`: a jittered crop of a texture, or the drawn part in a slightly varied pose."""
    if source == "washer":
        return _washer(rng, size)
    texture = _texture(source)
    top, left = (int(rng.integers(0, d - size + 1)) for d in texture.shape[:2])
    crop = texture[top:top + size, left:left + size].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = crop * rng.uniform(0.95, 1.05)  # a little light variation between shots
    return Image.fromarray(crop.clip(0, 255).astype(np.uint8))


def _washer(rng: np.random.Generator, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(40, 55, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6)
    outer, inner = size * 0.36 + rng.uniform(-3, 3), size * 0.15 + rng.uniform(-2, 2)
    metal = int(rng.integers(165, 185))
    draw.ellipse([cx - outer, cy - outer, cx + outer, cy + outer], fill=(metal, metal, metal - 10))
    draw.ellipse([cx - outer * 0.8, cy - outer * 0.8, cx + outer * 0.8, cy + outer * 0.8],
                 outline=(metal - 30,) * 3, width=3)
    draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=image.getpixel((1, 1)))
    noise = rng.normal(0, 4, (size, size, 3))
    return Image.fromarray((np.asarray(image, np.float32) + noise).clip(0, 255).astype(np.uint8))


def add_defect(image: Image.Image, kind: str, rng: np.random.Generator, source: str = "") -> tuple[Image.Image, np.ndarray]:
    """The image with one defect of `kind` pasted in, and its mask (bool, True on the defect)."""
    size = image.size[0]
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = (float(v) for v in rng.uniform(size * 0.3, size * 0.7, 2))
    if kind == "scratch":
        points = [(cx, cy)]
        angle = rng.uniform(0, np.pi)
        for _ in range(6):
            angle += rng.normal(0, 0.25)
            points.append((points[-1][0] + 9 * np.cos(angle), points[-1][1] + 9 * np.sin(angle)))
        draw.line(points, fill=255, width=int(rng.integers(2, 4)))
        colour = np.array([235, 235, 230]) if rng.random() < 0.5 else np.array([20, 20, 20])
        return _blend(image, mask, colour, 0.85)
    if kind == "stain":
        rx, ry = rng.uniform(10, 22, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        soft = mask.filter(ImageFilter.GaussianBlur(3))
        return _blend(image, soft, np.array([110, 70, 30]), 0.6, threshold=0.3)
    if kind == "hole":
        rx, ry = rng.uniform(6, 13, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        holed = np.asarray(image, np.float32).copy()
        rim = np.asarray(mask.filter(ImageFilter.MaxFilter(5)), np.float32) / 255
        inside = np.asarray(mask, np.float32) / 255
        holed = holed * (1 - 0.35 * rim[..., None])  # a shadowed rim around the hole
        holed = holed * (1 - inside[..., None]) + 8 * inside[..., None]
        return Image.fromarray(holed.clip(0, 255).astype(np.uint8)), np.asarray(mask) > 0
    if kind == "foreign":
        other = next(s for s in ("gravel", "brick", "grass") if s != source)
        patch = good_image(other, rng, size)
        side = int(rng.uniform(22, 40))
        left, top = int(cx - side / 2), int(cy - side / 2)
        draw.polygon([(left + rng.uniform(-5, 5), top), (left + side, top + rng.uniform(-5, 5)),
                      (left + side + rng.uniform(-5, 5), top + side), (left, top + side + rng.uniform(-5, 5))],
                     fill=255)
        pasted = Image.composite(patch, image, mask)
        return pasted, np.asarray(mask) > 0
    raise ValueError(f"unknown defect {kind!r}: choose one of {', '.join(DEFECTS)}")


def _blend(image, mask, colour, strength, threshold: float = 0.5):
    weight = np.asarray(mask, np.float32)[..., None] / 255 * strength
    mixed = np.asarray(image, np.float32) * (1 - weight) + colour * weight
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8)), np.asarray(mask, np.float32) / 255 > threshold


def write_mvtec(root: str | Path, source: str, seed: int = 0, n_train: int = 20, n_test_good: int = 8,
                n_per_defect: int = 6, defects=DEFECTS, size: int = 256) -> Path:
    """An MVTec AD-layout folder of `source`: train/good, test/good, test/<defect>, ground_truth/<defect>."""
    root, rng = Path(root), np.random.default_rng(seed)
    for folder in ["train/good", "test/good"] + [f"test/{d}" for d in defects] + [f"ground_truth/{d}" for d in defects]:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        good_image(source, rng, size).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        good_image(source, rng, size).save(root / "test" / "good" / f"{i:03d}.png")
    for defect in defects:
        for i in range(n_per_defect):
            image, mask = add_defect(good_image(source, rng, size), defect, rng, source)
            image.save(root / "test" / defect / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root
