"""Domain shifts built from real images: the same Fashion-MNIST classes through another "camera".

Only Fashion-MNIST is installable as images here, so a target domain is the same garments seen
differently, each a shift a real deployment meets:
- inverted:      reversed polarity (a negative scan; light garments on a dark belt become the opposite);
- blur_lowres:   a cheap, out-of-focus camera (down to 10 px, back up, blurred);
- tint_contrast: a warm-tinted, washed-out camera (contrast 0.35 around grey, sepia colour);
- none:          no shift: the target is drawn from the source's own distribution (adaptation must be safe).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

SHIFTS = ("none", "blur_lowres", "tint_contrast", "inverted")


def apply_shift(image: Image.Image, shift: str) -> Image.Image:
    image = image.convert("L")
    if shift == "none":
        return image
    if shift == "inverted":
        return ImageOps.invert(image)
    if shift == "blur_lowres":
        small = image.resize((10, 10), Image.Resampling.BILINEAR)
        return small.resize(image.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(0.8))
    if shift == "tint_contrast":
        washed = ImageEnhance.Contrast(image.convert("RGB")).enhance(0.35)
        return ImageOps.colorize(washed.convert("L"), black=(70, 40, 10), white=(255, 230, 170))
    raise ValueError(f"unknown shift {shift!r}: one of {', '.join(SHIFTS)}")


def shifted_copy(src: Path, dest: Path, shift: str, flat: bool = False) -> Path:
    """Copy a folder of class folders through `shift`; `flat` drops the class folders (unlabelled target)."""
    for path in sorted(src.glob("*/*.png")):
        out = dest / (f"{path.parent.name}_{path.name}" if flat else Path(path.parent.name, path.name))
        out.parent.mkdir(parents=True, exist_ok=True)
        apply_shift(Image.open(path), shift).save(out)
    return dest
