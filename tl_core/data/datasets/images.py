"""Opening one image safely: format sniffing, bounded decoding (pixels, aspect ratio, memory),
EXIF orientation, RGB conversion; every refusal an ImageRefused naming the file and the reason."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


MAX_IMAGE_PIXELS = 64_000_000  # above any ordinary camera; beyond it a file is treated as a decompression bomb
# Longer side ÷ shorter side. A panorama is 4-12:1; a 20000×2 strip is no photo, and resizing it by its
# shorter side (as the eval transform does) would make a 2 560 000-pixel-long image: gigabytes.
MAX_ASPECT_RATIO = 20
# The most memory one image may take to decode and convert (raster and working copies): a 64-megapixel
# photo fits; a file that would need more is refused before a byte is decoded.
MAX_DECODE_BYTES = 1 << 30
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F")
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # Pillow's storage; else 4
_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "AVIF")


class ImageRefused(ValueError):
    """One file is not a usable image; `reason` says why in plain words, `name` which file."""

    def __init__(self, reason: str, name: str = ""):
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason
        self.name = name


def open_image(src: str | Path | bytes, name: str = "", *, draft_size: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Decode one image as RGB, EXIF-oriented; raise ImageRefused saying why it cannot be used.

    `draft_size` lets a JPEG decode at a reduced scale, and any other image be reduced right after
    decoding, that still covers that many pixels a side. `max_pixels` defaults to MAX_IMAGE_PIXELS.
    Images thinner than MAX_ASPECT_RATIO:1, or that would take more than MAX_DECODE_BYTES, are refused.
    """
    return _decode(src, name, draft_size, max_pixels)[0]


def _decode(src, name: str, draft_size: int | None, max_pixels: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, full-resolution size after orientation)."""
    if not name and not isinstance(src, (bytes, bytearray, memoryview)):
        name = str(src)
    data = _read_source(src, name)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        image = Image.open(io.BytesIO(data), formats=_open_formats())
        _check_geometry(image.size, limit, name)
        full_size = image.size
        if draft_size:
            image.draft("RGB", (draft_size, draft_size))
        _check_decode_budget(image, draft_size, name)
        image.load()  # a full decode: truncation and corruption only show here
        image = _reduced(image, draft_size)
        oriented, swapped = _exif_oriented(image)
        rgb = _to_rgb(oriented, name)
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        is_image, kind = _sniff(data)
        reason = f"corrupt or unreadable {kind} image" if is_image else f"not an image ({kind})"
        raise ImageRefused(reason, name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRefused(f"too many pixels, possibly a decompression bomb ({error})", name) from None
    except Exception as error:  # Pillow's plugins signal bad data with many exception types
        raise ImageRefused(f"corrupt or truncated image ({error})", name) from None
    return rgb, (full_size[::-1] if swapped else full_size)


def _read_source(src, name: str) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        try:
            data = Path(src).read_bytes()
        except FileNotFoundError:
            raise ImageRefused("file not found", name) from None
        except IsADirectoryError:
            raise ImageRefused("a folder, not a file", name) from None
        except OSError as error:
            raise ImageRefused(f"could not read the file ({error.strerror or error})", name) from None
    if not data:
        raise ImageRefused("empty file (0 bytes)", name)
    return data


def _open_formats() -> list[str]:
    # Only plain raster formats: others (EPS, PDF, PSD...) bring external programs or rare parsers.
    Image.init()
    return [fmt for fmt in _FORMATS if fmt in Image.OPEN]


def _check_geometry(size: tuple[int, int], limit: int, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageRefused(f"no pixels ({width}×{height})", name)
    if width * height > limit:
        raise ImageRefused(f"too many pixels ({width}×{height} = {width * height / 1e6:.0f} megapixels; "
                           f"the limit is {limit / 1e6:g}), possibly a decompression bomb", name)
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageRefused(f"too thin to use: {width}×{height} px is {ratio:,.0f}:1, and the limit is "
                           f"{MAX_ASPECT_RATIO}:1; crop it to the part that shows the object", name)


def _check_decode_budget(image: Image.Image, draft_size: int | None, name: str) -> None:
    """Refuse before decoding an image whose raster and working copies would exceed MAX_DECODE_BYTES."""
    width, height = image.size  # after draft: the size the decoder will really produce
    raster = width * height * _BYTES_PER_PIXEL.get(image.mode, 4)
    reduced = _reduce_factor(image.size, draft_size) ** 2
    needed = raster + 3 * 4 * width * height // reduced  # orientation, RGB and alpha copies, 4 bytes a pixel
    if needed > MAX_DECODE_BYTES:
        raise ImageRefused(f"would need about {needed / 2**20:,.0f} MB of memory to decode ({width}×{height} px, "
                           f"{image.mode}); the limit is {MAX_DECODE_BYTES / 2**20:,.0f} MB an image. "
                           "Save it smaller (for example 4000 px on the longer side)", name)


def _reduce_factor(size: tuple[int, int], draft_size: int | None) -> int:
    return max(1, min(size) // draft_size) if draft_size else 1


def _reduced(image: Image.Image, draft_size: int | None) -> Image.Image:
    """Shrink by a whole factor that keeps draft_size pixels a side, as JPEG's draft does while decoding:
    the working copies that follow (orientation, colour) are then small."""
    factor = _reduce_factor(image.size, draft_size)
    if factor < 2 or image.mode not in _REDUCIBLE_MODES:  # a palette's indices cannot be averaged
        return image
    return image.reduce(factor)


def _exif_oriented(image: Image.Image) -> tuple[Image.Image, bool]:
    """The image turned upright per its EXIF orientation, and whether width and height swapped."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        return ImageOps.exif_transpose(image), orientation in (5, 6, 7, 8)
    except Exception:  # a damaged EXIF block should not cost the user an otherwise good image
        return image, False


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB for every mode: transparency on white, 16-bit and float rescaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if mode in ("P", "PA", "LA", "La", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _deep_to_rgb(image)
    try:
        return image.convert("RGB")  # 1, L, CMYK, YCbCr, ...
    except ValueError:
        raise ImageRefused(f"unsupported colour mode {mode}", name) from None


def _deep_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey to RGB.

    Integer data within 0..65535 is read as 16-bit: divided by 257, so 65535 -> 255 and mid-grey
    32768 -> 127 (12-bit scanner data therefore looks dark, as in other viewers). Floats within
    0..1 are scaled by 255. Anything else is stretched from its own minimum to maximum.
    """
    values = np.asarray(image)
    low, high = values.min(), values.max()
    if image.mode != "F" and low >= 0 and high <= 65535:
        grey = values.astype(np.uint32) // 257
    elif image.mode == "F" and low >= 0 and high <= 1:
        grey = np.rint(values * 255)
    elif high > low:  # float32 is exact enough for 8-bit output and takes half the memory of float64
        grey = np.rint((values.astype(np.float32) - np.float32(low)) * np.float32(255 / (float(high) - float(low))))
    else:
        grey = np.zeros(values.shape)
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def _sniff(data: bytes) -> tuple[bool, str]:
    """(looks like an image format, what the bytes look like), for refusal messages."""
    head = data[:512]
    for magic, kind in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"),
                        (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")):
        if head.startswith(magic):
            return True, kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True, "WebP"
    if head[4:8] == b"ftyp":
        if head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return False, "HEIC/HEIF photo, which this installation cannot read; convert it to JPEG"
        return False, "video or MP4-family file"
    for magic, kind in ((b"%PDF", "PDF document"), (b"PK\x03\x04", "zip archive"), (b"\x1f\x8b", "gzip archive"),
                        (b"Rar!", "RAR archive"), (b"7z\xbc\xaf", "7-Zip archive"), (b"%!PS", "PostScript file")):
        if head.startswith(magic):
            return False, kind
    lowered = head.lstrip().lower()
    if b"<svg" in lowered:
        return False, "SVG drawing; export it as PNG"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return False, "HTML page"
    if b"\x00" not in head and head.decode("utf-8", errors="replace").count("\ufffd") <= 2:
        return False, "text file"
    return False, "unrecognised binary data"
