"""Decoded images as training sees them: resized and centre-cropped once per size, cached on disk
as uint8; prepare_image gives one image the same geometry."""
from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from ...ops.storage import atomic_file
from .images import ImageRefused, open_image

if TYPE_CHECKING:
    import torch


_DECODE_THREADS = 2  # Pillow releases the GIL while decoding and resizing
_DECODE_VERSION = 2  # bump when decoding changes, so caches made the old way are not reused
_RESIZE_PIXELS = 16_000_000  # above this, an image is resized straight into its crop, never whole
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def decode_images(paths: list[Path], size: int, crop_pct: float = 0.875, interpolation: str = "bicubic",
                  cache_dir: Path | None = None, progress: Callable[[int, int], None] | None = None) -> "torch.Tensor":
    """Decode, orient, resize the shorter side to size/crop_pct, center-crop: uint8 N×3×size×size.

    The geometry is timm's eval transform with crop_mode="center". With `cache_dir`, the result is
    saved once and a later call with the same files and settings only loads it.
    """
    import torch  # imported here: the upload pages need none of it, and it is slow to import

    paths = [Path(p) for p in paths]
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"decoded-{_cache_key(paths, size, crop_pct, interpolation)}.npy"
        cached = _load_cached(cache_file, (len(paths), 3, size, size))
        if cached is not None:
            if progress:
                progress(len(paths), len(paths))
            return torch.from_numpy(cached)
    array = _decode_all(paths, size, crop_pct, _resample(interpolation), progress)
    if cache_file is not None:
        _save_npy_atomically(cache_file, array)
    return torch.from_numpy(array)


def _decode_all(paths: list[Path], size: int, crop_pct: float, resample, progress) -> np.ndarray:
    scale_size = math.floor(size / crop_pct)  # as timm: the shorter side before the center crop

    def decode_one(path: Path) -> np.ndarray:
        image = open_image(path, str(path), draft_size=scale_size)
        return _eval_geometry(image, size, scale_size, resample)

    out = np.empty((len(paths), 3, size, size), np.uint8)
    with ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool:
        try:
            for index, chw in enumerate(pool.map(decode_one, paths)):
                out[index] = chw
                if progress:
                    progress(index + 1, len(paths))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # one refused file ends the job; skip the queued rest
            raise
    return out


def prepare_image(image: Image.Image, size: int, crop_pct: float = 0.875,
                  interpolation: str = "bicubic") -> "torch.Tensor":
    """One RGB image (from open_image) → uint8 3×size×size, with decode_images' geometry, to predict as trained."""
    import torch

    scale_size = math.floor(size / crop_pct)
    return torch.from_numpy(_eval_geometry(image.convert("RGB"), size, scale_size, _resample(interpolation)))


def _resample(interpolation: str) -> Image.Resampling:
    try:
        return _RESAMPLE[interpolation]
    except KeyError:
        raise ValueError(f"interpolation must be one of {', '.join(_RESAMPLE)}, got {interpolation!r}") from None


def _eval_geometry(image: Image.Image, size: int, scale_size: int, resample) -> np.ndarray:
    """timm's eval transform (crop_mode="center") as a uint8 3×size×size array.

    Exactly timm's (resize the shorter side, then crop) while the resized image stays small; beyond
    _RESIZE_PIXELS only the crop is computed, straight from the source (off by at most 1 in a pixel).
    """
    width, height = _shorter_side_size(image.size, scale_size)
    if width * height <= _RESIZE_PIXELS:
        cropped = _center_crop(_resize_shorter(image, scale_size, resample), size)
    else:
        cropped = _resized_crop(image, (width, height), size, resample)
    return np.asarray(cropped).transpose(2, 0, 1).copy()


def _resized_crop(image: Image.Image, resized: tuple[int, int], size: int, resample) -> Image.Image:
    """The center size×size crop of `image` resized to `resized`, without making the resized image.

    One axis at a time, as Pillow's own resize does (across, then down), each pass reading only the
    source rows the crop needs: a single pass with a box that is offset on both axes goes wrong in Pillow.
    """
    width, height = resized
    left, top = _crop_start(width, size), _crop_start(height, size)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + size, width), min(top + size, height)
    sx, sy = image.width / width, image.height / height
    reach = 3 * max(sy, 1.0) + 2  # rows the widest filter (Lanczos, 3 a side) reads beyond the crop
    r0, r1 = max(0, math.floor(y0 * sy - reach)), min(image.height, math.ceil(y1 * sy + reach))
    rows = image.crop((0, r0, image.width, r1))
    across = rows.resize((x1 - x0, rows.height), resample, box=(x0 * sx, 0, x1 * sx, rows.height))
    part = across.resize((x1 - x0, y1 - y0), resample, box=(0, y0 * sy - r0, across.width, y1 * sy - r0))
    if part.size == (size, size):
        return part
    canvas = Image.new(image.mode, (size, size))  # torchvision pads a too-short side with black
    canvas.paste(part, (x0 - left, y0 - top))
    return canvas


def _shorter_side_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    width, height = size
    return (short, int(short * height / width)) if width <= height else (int(short * width / height), short)


def _resize_shorter(image: Image.Image, short: int, resample) -> Image.Image:
    """torchvision's Resize(int): the shorter side to `short`, the longer one truncated, aspect kept."""
    new_size = _shorter_side_size(image.size, short)
    return image if new_size == image.size else image.resize(new_size, resample)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's CenterCrop: a side shorter than `size` is padded with black."""
    width, height = image.size
    left, top = _crop_start(width, size), _crop_start(height, size)
    return image.crop((left, top, left + size, top + size))


def _crop_start(length: int, crop: int) -> int:
    if crop > length:
        return -((crop - length) // 2)  # torchvision pads the smaller half before, PIL fills outside with 0
    return int(round((length - crop) / 2.0))


def _cache_key(paths: list[Path], size: int, crop_pct: float, interpolation: str) -> str:
    """Hash of the settings and each file's path, size and modification time: a changed file is a new key."""
    digest = hashlib.sha256(f"{_DECODE_VERSION}|{size}|{crop_pct!r}|{interpolation}".encode())
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            raise ImageRefused("file not found", str(path)) from None
        digest.update(f"\n{path.resolve()}\t{info.st_size}\t{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _load_cached(cache_file: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        array = np.load(cache_file)
    except (OSError, ValueError):
        return None  # missing or damaged: decode again
    return array if array.shape == shape and array.dtype == np.uint8 else None


def _save_npy_atomically(path: Path, array: np.ndarray) -> None:
    # Streams into the file: atomic_write_bytes would need a second copy in memory.
    with atomic_file(path) as f:
        np.save(f, array)
