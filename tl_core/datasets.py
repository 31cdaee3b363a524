"""Datasets: safe ingest of folders, uploads and archives; the audit; the seeded split; the decoded-image cache.

A dataset lives in `<workspace>/datasets/<id>/`: the accepted files, byte for byte, under
`images/<class>/`, and `manifest.json` listing them with their hashes and sizes and every file
that was refused, with the reason. Nothing a user gives is dropped without a record, except
operating-system clutter (`.DS_Store`, `__MACOSX/`, `Thumbs.db`, `desktop.ini`, dot-files).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import random
import re
import secrets
import shutil
import stat
import time
import unicodedata
import zipfile
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .storage import StorageFull, atomic_file, atomic_write_json, is_disk_full, read_json, workspace_root, write_bytes

if TYPE_CHECKING:
    import torch

MAX_IMAGE_PIXELS = 64_000_000  # above any ordinary camera; beyond it a file is treated as a decompression bomb
# Longer side ÷ shorter side. A panorama is 4-12:1; a 20000×2 strip is no photo, and resizing it by its
# shorter side (as the eval transform does) would make a 2 560 000-pixel-long image: gigabytes.
MAX_ASPECT_RATIO = 20
# The most memory one image may take to decode and convert (raster and working copies): a 64-megapixel
# photo fits; a file that would need more is refused before a byte is decoded.
MAX_DECODE_BYTES = 1 << 30
MAX_ZIP_BYTES = 2 << 30  # uncompressed total of an archive
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 100  # images are already compressed; a member that deflates far more is suspect
MIN_IMAGES_PER_CLASS = 2
FEW_IMAGES_PER_CLASS = 10  # below this the audit suggests adding examples

_RATIO_CHECK_FROM_BYTES = 1 << 20  # a small member cannot hurt, whatever its ratio
_VALIDATE_DRAFT = 512  # ingest decodes big JPEGs at reduced scale: every byte is still read, so damage shows
_DECODE_THREADS = 2  # Pillow releases the GIL while decoding and resizing
_DECODE_VERSION = 2  # bump when decoding changes, so caches made the old way are not reused
_RESIZE_PIXELS = 16_000_000  # above this, an image is resized straight into its crop, never whole
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F")
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # Pillow's storage; else 4
_CLUTTER_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "AVIF")
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class DatasetError(ValueError):
    """The files as a whole cannot make a dataset; the message says what to fix.

    `refused` lists the files that were refused on the way, for the UI to show.
    """

    def __init__(self, message: str, refused: list[dict] | None = None):
        super().__init__(message)
        self.refused = list(refused or [])


class ImageRefused(ValueError):
    """One file is not a usable image; `reason` says why in plain words, `name` which file."""

    def __init__(self, reason: str, name: str = ""):
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason
        self.name = name


@dataclass
class Dataset:
    """An ingested dataset: its folder, classes (sorted), accepted items and refused files."""

    root: Path
    id: str
    name: str
    classes: list[str]
    items: list[dict]
    refused: list[dict]
    created: str = ""
    source: dict = field(default_factory=dict)

    def paths(self) -> list[Path]:
        """Absolute image paths, in items order."""
        return [self.root / item["path"] for item in self.items]

    def labels(self) -> list[int]:
        """Class indices into `classes`, in items order."""
        index_of = {name: index for index, name in enumerate(self.classes)}
        return [index_of[item["label"]] for item in self.items]

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        per_class = Counter(item["label"] for item in self.items)
        return {name: per_class[name] for name in self.classes}


# ---------------------------------------------------------------- opening one image

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


# ---------------------------------------------------------------- ingest

class _File(NamedTuple):
    name: str  # as the user gave it, for messages
    parts: tuple[str, ...]  # its path in the tree, folder by folder
    read: Callable[[], bytes] | None
    refusal: str | None = None


class _Entry(NamedTuple):
    name: str
    label: str | None
    read: Callable[[], bytes] | None
    refusal: str | None = None
    subfolder: str | None = None  # the folders between the class folder and the file, when any


def ingest_folder(src: str | Path, name: str | None = None, workspace: Path | None = None, *,
                  progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Ingest a folder of class folders (`cats/a.jpg`, `dogs/b.png`); bad files are refused, not fatal."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    files, folders = _walk_folder(src)
    entries, refused = _tree_entries(files, folders)
    source = {"kind": "folder", "path": str(src.resolve()), "fingerprint": _fingerprint(src, files)}
    return _ingest(entries, refused, name or src.resolve().name, source, workspace, progress)


def ingest_or_reuse_folder(src: str | Path, name: str | None = None, workspace: Path | None = None) -> Dataset:
    """The dataset already ingested from folder `src` if its files are unchanged since, else a new ingest.

    The command line is run again and again on one folder; a copy each time would fill the disk.
    """
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    wanted = {"kind": "folder", "path": str(src.resolve()), "fingerprint": _fingerprint(src, _walk_folder(src)[0])}
    for dataset in list_datasets(workspace):
        if all(dataset.source.get(key) == value for key, value in wanted.items()):
            return dataset
    return ingest_folder(src, name, workspace)


def ingest_zip(src: str | Path | bytes, name: str | None = None, workspace: Path | None = None, *,
               max_members: int = MAX_ZIP_MEMBERS, max_total_bytes: int = MAX_ZIP_BYTES,
               max_ratio: float = MAX_ZIP_RATIO, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Ingest a zip of class folders (one wrapper folder allowed), reading members one by one.

    Nothing is extracted blindly: escaping paths, links, encrypted members and zip bombs are refused.
    """
    in_memory = isinstance(src, (bytes, bytearray, memoryview))
    label = "archive" if in_memory else Path(src).name
    try:
        archive = zipfile.ZipFile(io.BytesIO(src) if in_memory else src)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{label}: not a readable zip archive ({error})") from None
    with archive:
        infos = archive.infolist()
        _check_archive_limits(infos, label, max_members, max_total_bytes)
        files, folders = _zip_tree(archive, infos, max_ratio)
        entries, refused = _tree_entries(files, folders)
        source = {"kind": "zip", "file": label}
        return _ingest(entries, refused, name or Path(label).stem, source, workspace, progress)


def ingest_files(files: list[tuple], name: str | None = None, workspace: Path | None = None, *,
                 progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Ingest uploaded files given as (file name, bytes, class name), as an upload widget hands them over.

    A fourth element, when given, names the sub-folder of the class folder the file came from.
    """
    entries = []
    for file_name, data, label, *subfolder in files:
        if _is_clutter((_basename(file_name),)):
            continue
        label = _clean_label(label or "")
        entries.append(_Entry(file_name, label or None, partial(bytes, data), None if label else "no class given",
                              (subfolder or [None])[0] or None))
    default_name = time.strftime("upload %Y-%m-%d %H:%M")
    return _ingest(entries, [], name or default_name, {"kind": "upload", "files": len(files)}, workspace, progress)


def _walk_folder(src: Path) -> tuple[list[_File], list[tuple[str, tuple[str, ...]]]]:
    """Every file and folder below `src`, sorted; symlinks are followed (it is the user's own disk)."""
    files, folders = [], []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        if _is_symlink_loop(Path(dirpath), src):
            dirnames.clear()  # its content was already listed under the folder it loops back to
            continue
        dirnames[:] = sorted(d for d in dirnames if not _is_clutter((d,)))
        rel = Path(dirpath).relative_to(src).parts
        if rel:
            folders.append(("/".join(rel), rel))
        for file_name in sorted(filenames):
            parts = rel + (file_name,)
            files.append(_File("/".join(parts), parts, partial(_read_source, Path(dirpath, file_name), "")))
    return files, folders


def _fingerprint(src: Path, files: list[_File]) -> str:
    """Hash of every file's path, size and modification time: changes when the folder's content does."""
    digest = hashlib.sha256()
    for file in files:
        try:
            info = src.joinpath(*file.parts).stat()
            digest.update(f"{file.name}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{file.name}\tunreadable\n".encode())
    return digest.hexdigest()


def _is_symlink_loop(path: Path, src: Path) -> bool:
    real = os.path.realpath(path)
    return any(os.path.realpath(parent) == real for parent in path.parents if len(parent.parts) >= len(src.parts))


def _check_archive_limits(infos: list[zipfile.ZipInfo], label: str, max_members: int, max_total_bytes: int) -> None:
    if len(infos) > max_members:
        raise DatasetError(f"{label}: {len(infos)} entries, over the limit of {max_members}; "
                           "split the archive into smaller ones")
    total = sum(info.file_size for info in infos)
    if total > max_total_bytes:
        raise DatasetError(f"{label}: {_human_bytes(total)} uncompressed, over the limit of "
                           f"{_human_bytes(max_total_bytes)}; split the archive into smaller ones")


def _zip_tree(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], max_ratio: float):
    """The archive's members as files and folders, each dangerous member already carrying its refusal."""
    files, folders = [], []
    for info in infos:
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
        refusal = _member_refusal(info, max_ratio)
        if info.is_dir():
            if refusal is None:
                folders.append((info.filename, parts))
            continue
        files.append(_File(info.filename, parts, partial(_read_member, archive, info), refusal))
    return files, folders


def _member_refusal(info: zipfile.ZipInfo, max_ratio: float) -> str | None:
    path = info.filename.replace("\\", "/")  # some Windows tools write backslashes
    if path.startswith("/") or re.match(r"[A-Za-z]:", path) or ".." in path.split("/"):
        return "path leads outside the archive's folder (absolute or '..'); skipped for safety"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link; skipped for safety"
    if info.flag_bits & 0x1:
        return "encrypted; unzip it with its password first"
    if info.file_size > _RATIO_CHECK_FROM_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return f"compressed {ratio:.0f}:1, far more than any image; possibly a zip bomb"
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)  # bounded by the declared size, which the limits checked
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as error:
        raise ImageRefused(f"could not be read from the archive ({error})") from None


def _tree_entries(files: list[_File], folders: list[tuple[str, tuple[str, ...]]]) -> tuple[list[_Entry], list[dict]]:
    """Entries whose class is the first folder below an optional wrapper; plus empty class folders, refused."""
    depth = _wrapper_depth([f.parts for f in files if f.refusal is None and not _is_clutter(f.parts)])
    entries, used_folders = [], set()
    for file in files:
        parts = file.parts[depth:]
        if file.refusal is not None:  # a dangerous member is reported even when it looks like clutter
            entries.append(_Entry(file.name, None, None, file.refusal))
        elif _is_clutter(file.parts):
            continue
        elif len(parts) == 1:
            entries.append(_Entry(file.name, None, None, "not inside a class folder"))
        elif len(parts) > 2:  # kept in its class; the audit says so and offers to leave such images out
            used_folders.add(parts[0])
            entries.append(_Entry(file.name, _clean_label(parts[0]), file.read, None, "/".join(parts[1:-1])))
        else:
            used_folders.add(parts[0])
            entries.append(_Entry(file.name, _clean_label(parts[0]), file.read))
    empty = [{"name": shown.rstrip("/") + "/", "reason": "empty class folder"}
             for shown, parts in folders
             if len(parts) == depth + 1 and not _is_clutter(parts) and parts[-1] not in used_folders]
    return entries, empty


def _wrapper_depth(file_parts: list[tuple[str, ...]]) -> int:
    """1 when every file sits two folders deep under one top folder (a zip's usual wrapper), else 0."""
    tops = {parts[0] for parts in file_parts}
    return 1 if len(tops) == 1 and all(len(parts) >= 3 for parts in file_parts) else 0


def _is_clutter(parts: tuple[str, ...]) -> bool:
    """Operating-system files that are no user data: dot-files, `__MACOSX/`, `Thumbs.db`, `desktop.ini`."""
    return any((part.startswith(".") and part not in (".", "..")) or part.lower() in _CLUTTER_NAMES
               for part in parts)


def _ingest(entries: list[_Entry], refused: list[dict], name: str, source: dict, workspace: Path | None,
            progress: Callable[[int, int], None] | None) -> Dataset:
    """Validate and copy entries into a new dataset folder, which appears only once complete."""
    dataset_id, created = _new_id()
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    building = datasets_dir / f".{dataset_id}.partial"  # list_datasets skips dot-folders
    with _published_or_removed(building):
        items, bad = _store_entries(entries, building, progress)
        refused = refused + bad
        _check_usable(Counter(item["label"] for item in items), refused)
        manifest = {"id": dataset_id, "name": name, "created": created,
                    "classes": sorted({item["label"] for item in items}),
                    "items": items, "refused": refused, "source": source}
        atomic_write_json(building / "manifest.json", manifest)
    return _from_manifest(datasets_dir / dataset_id, manifest)


@contextmanager
def _published_or_removed(building: Path):
    """Around the making of a dataset in `building` (.<id>.partial): on success it appears whole as
    <id>; on any failure it is removed, so no half-made dataset is ever listed."""
    try:
        yield
        os.replace(building, building.with_name(building.name[1:].removesuffix(".partial")))
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _store_entries(entries: list[_Entry], root: Path, progress) -> tuple[list[dict], list[dict]]:
    """Copy each decodable entry to `root/images/<class>/`; the others become refusals."""
    items, refused, placement = [], [], _Placement()
    for done, entry in enumerate(entries, 1):
        try:
            if entry.refusal:
                raise ImageRefused(entry.refusal)
            data = entry.read()
            _, (width, height) = _decode(data, entry.name, _VALIDATE_DRAFT, None)
        except ImageRefused as refusal:
            refused.append({"name": entry.name, "reason": refusal.reason})
        else:
            rel = placement.place(entry.label, _basename(entry.name))
            try:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageFull(root / rel, len(data), error) if is_disk_full(error) else error from None
            write_bytes(root / rel, data)  # the original bytes: a later pipeline may decode differently
            items.append({"path": rel, "label": entry.label, "sha256": hashlib.sha256(data).hexdigest(),
                          "width": width, "height": height, "bytes": len(data)})
            if entry.subfolder:
                items[-1]["subfolder"] = entry.subfolder
        if progress:
            progress(done, len(entries))
    items.sort(key=lambda item: (item["label"], item["path"]))
    return items, refused


def _check_usable(counts: Counter, refused: list[dict]) -> None:
    """Two classes at least; a class with a single image is the audit's warning, not an error."""
    note = _refused_note(refused)
    if len(counts) < 2:
        found = f"{len(counts)} ({', '.join(sorted(counts))})" if counts else "0"
        raise DatasetError(f"fewer than 2 classes: found {found}{note}; a classifier needs images of "
                           "2 classes or more, one folder per class", refused)


def _refused_note(refused: list[dict]) -> str:
    if not refused:
        return ""
    shown = ", ".join(f"{r['name']} ({r['reason']})" for r in refused[:3])
    more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
    return f"; {_plural(len(refused), 'file')} refused: {shown}{more}"


class _UniqueNames:
    """Safe file-system names, unique ignoring case (macOS and Windows disks ignore it)."""

    def __init__(self):
        self._taken: set[str] = set()

    def claim(self, wanted: str) -> str:
        stem, suffix = os.path.splitext(_safe_name(wanted))
        candidate, n = stem + suffix, 1
        while candidate.lower() in self._taken:
            candidate, n = f"{stem}_{n}{suffix}", n + 1
        self._taken.add(candidate.lower())
        return candidate


class _Placement:
    """Where each accepted file goes: `images/<safe class folder>/<safe, unique file name>`."""

    def __init__(self):
        self._folder_names = _UniqueNames()
        self._folder_of: dict[str, str] = {}
        self._file_names: dict[str, _UniqueNames] = defaultdict(_UniqueNames)

    def place(self, label: str, file_name: str) -> str:
        if label not in self._folder_of:
            self._folder_of[label] = self._folder_names.claim(label)
        folder = self._folder_of[label]
        return f"images/{folder}/{self._file_names[folder].claim(file_name)}"


def _safe_name(name: str) -> str:
    """Letters of any script, digits, `.`, `-` and `_`; no leading dot; short enough for any disk."""
    name = re.sub(r"[^\w.\-]+", "_", unicodedata.normalize("NFC", name)).strip("._") or "file"
    stem, suffix = os.path.splitext(name)
    return stem[:100] + suffix[:10]


def _clean_label(label: str) -> str:
    # macOS stores names decomposed (NFD); one class must not become two
    return unicodedata.normalize("NFC", label).strip()


def _basename(name: str) -> str:
    return re.split(r"[/\\]", name)[-1]


def _new_id() -> tuple[str, str]:
    """(id sortable by creation time and unique, ISO creation time in UTC)."""
    now_ns = time.time_ns()
    seconds = time.gmtime(now_ns // 1_000_000_000)
    micros = now_ns // 1000 % 1_000_000
    dataset_id = f"{time.strftime('%Y%m%d-%H%M%S', seconds)}-{micros:06d}-{secrets.token_hex(2)}"
    return dataset_id, time.strftime("%Y-%m-%dT%H:%M:%SZ", seconds)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _verb(n: int, singular: str, plural: str) -> str:
    return singular if n == 1 else plural


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


# ---------------------------------------------------------------- loading and listing

def load_dataset(root: str | Path) -> Dataset:
    """The dataset in `root`, from its manifest.json."""
    manifest_path = Path(root) / "manifest.json"
    try:
        manifest = read_json(manifest_path)
    except ValueError as error:
        raise DatasetError(f"{manifest_path} is damaged ({error})") from None
    if manifest is None:
        raise DatasetError(f"{root}: no manifest.json here; ingest the images first")
    try:
        return _from_manifest(Path(root), manifest)
    except (KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{manifest_path} is damaged (missing or wrong {error})") from None


def list_datasets(workspace: Path | None = None) -> list[Dataset]:
    """Every complete dataset in the workspace, newest first."""
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    if not datasets_dir.is_dir():
        return []
    found = []
    for root in datasets_dir.iterdir():
        if root.name.startswith(".") or not (root / "manifest.json").is_file():
            continue  # half-built (a failed ingest cleans up, a crashed one may not)
        try:
            found.append(load_dataset(root))
        except DatasetError:
            continue  # one damaged folder must not hide the others
    return sorted(found, key=lambda dataset: dataset.id, reverse=True)


def _from_manifest(root: Path, manifest: dict) -> Dataset:
    return Dataset(root=Path(root), id=manifest["id"], name=manifest["name"], classes=list(manifest["classes"]),
                   items=list(manifest["items"]), refused=list(manifest.get("refused", [])),
                   created=manifest.get("created", ""), source=dict(manifest.get("source", {})))


# ---------------------------------------------------------------- audit

def audit(dataset: Dataset, val: Dataset | None = None, tiny: int = 32) -> dict:
    """Counts, imbalance, exact duplicates, tiny images and refused files, with plain-language warnings.

    Duplicate pairs hold item paths relative to their dataset root; in `across_train_val` the
    first is in `dataset`, the second in `val`.
    """
    counts = dataset.counts()
    within, across = _duplicate_pairs(dataset.items)
    report = {
        "classes": list(dataset.classes),
        "counts": counts,
        "total": len(dataset.items),
        "imbalance_ratio": max(counts.values()) / max(min(counts.values()), 1) if counts else 1.0,
        "duplicates": {"within_class": within, "across_classes": across,
                       "across_train_val": _shared_pairs(dataset.items, val.items) if val else []},
        "tiny": [{"path": item["path"], "width": item["width"], "height": item["height"]}
                 for item in dataset.items if min(item["width"], item["height"]) < tiny],
        "refused": list(dataset.refused),
        # The two cases the user decides: keep them (training works) or make a copy without them (without()).
        "single_image_classes": [label for label, n in counts.items() if n == 1],
        "from_subfolders": [{"path": item["path"], "label": item["label"], "subfolder": item["subfolder"]}
                            for item in dataset.items if item.get("subfolder")],
    }
    report["warnings"] = (_choice_warnings(report) + _balance_warnings(counts) + _file_warnings(report, tiny)
                          + _val_warnings(dataset, val))
    return report


def _choice_warnings(report: dict) -> list[str]:
    warnings = []
    if single := report["single_image_classes"]:
        warnings.append(f"{_plural(len(single), 'class')} {_verb(len(single), 'has', 'have')} a single image "
                        f"({_listed([repr(label) for label in single])}): it can train, but it is never validated "
                        "and one example teaches little; add images, or drop the class")
    if nested := report["from_subfolders"]:
        folders = Counter(f"{item['label']}/{item['subfolder']}/" for item in nested)
        shown = [f"{folder} ({n})" for folder, n in sorted(folders.items())]
        warnings.append(f"{_plural(len(nested), 'image')} {_verb(len(nested), 'was', 'were')} found in sub-folders "
                        f"of class folders and put in that class: {_listed(shown)}; if a sub-folder is a class of "
                        "its own, move it up next to the other class folders, or leave these images out")
    return warnings


def without(dataset: Dataset, classes: list[str] = (), from_subfolders: bool = False, name: str | None = None,
            workspace: Path | None = None) -> Dataset:
    """A new dataset holding `dataset`'s images except `classes` (and, if asked, those from sub-folders).

    The images were checked when `dataset` was made, so they are linked (or copied), not decoded again.
    """
    dropped = set(classes)
    items = [dict(item) for item in dataset.items
             if item["label"] not in dropped and not (from_subfolders and item.get("subfolder"))]
    _check_usable(Counter(item["label"] for item in items), [])
    what = [f"without {_listed([repr(c) for c in sorted(dropped)], 10)}"] if dropped else []
    what += ["without images from sub-folders"] if from_subfolders else []
    dataset_id, created = _new_id()
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    building = datasets_dir / f".{dataset_id}.partial"
    with _published_or_removed(building):
        for item in items:
            target = building / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(dataset.root / item["path"], target)
            except OSError:
                write_bytes(target, (dataset.root / item["path"]).read_bytes())
        manifest = {"id": dataset_id, "name": name or f"{dataset.name} ({', '.join(what) or 'copy'})",
                    "created": created, "classes": sorted({item["label"] for item in items}), "items": items,
                    "refused": list(dataset.refused), "source": {**dataset.source, "kind": "subset", "of": dataset.id}}
        atomic_write_json(building / "manifest.json", manifest)
    return _from_manifest(datasets_dir / dataset_id, manifest)


def _duplicate_pairs(items: list[dict]) -> tuple[list[list[str]], list[list[str]]]:
    """(copies within a class, copies across classes) as [first, copy] pairs of identical bytes."""
    by_hash = defaultdict(list)
    for item in items:
        by_hash[item["sha256"]].append(item)
    within, across = [], []
    for group in by_hash.values():
        first_of_label: dict[str, dict] = {}
        for item in group:
            first = first_of_label.setdefault(item["label"], item)
            if first is not item:
                within.append([first["path"], item["path"]])
        firsts = list(first_of_label.values())
        across += [[firsts[0]["path"], other["path"]] for other in firsts[1:]]
    return within, across


def _shared_pairs(train_items: list[dict], val_items: list[dict]) -> list[list[str]]:
    train_path_of = {}
    for item in train_items:
        train_path_of.setdefault(item["sha256"], item["path"])
    return [[train_path_of[item["sha256"]], item["path"]] for item in val_items if item["sha256"] in train_path_of]


def _balance_warnings(counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    largest = max(counts, key=counts.get)
    warnings = [f"class '{label}' has {round(counts[largest] / n, 1):g}x fewer images than '{largest}' "
                f"({n} vs {counts[largest]}); the model will lean toward the bigger classes"
                for label, n in counts.items() if 0 < n and 2 * n <= counts[largest]]
    few = [label for label, n in counts.items() if n < FEW_IMAGES_PER_CLASS]
    if few:
        warnings.append(f"{_plural(len(few), 'class')} {_verb(len(few), 'has', 'have')} fewer than "
                        f"{FEW_IMAGES_PER_CLASS} images ({_listed(few)}); more examples per class help a lot")
    return warnings


def _file_warnings(report: dict, tiny: int) -> list[str]:
    duplicates, warnings = report["duplicates"], []
    if duplicates["across_classes"]:
        n = len(duplicates["across_classes"])
        warnings.append(f"{_plural(n, 'image')} {_verb(n, 'appears', 'appear')} in two classes: "
                        f"{_listed(_pairs_shown(duplicates['across_classes']))}; keep each in one class only")
    if duplicates["within_class"]:
        n = len(duplicates["within_class"])
        warnings.append(f"{_plural(n, 'image')} {_verb(n, 'is an exact copy', 'are exact copies')} of another "
                        f"in the same class: "
                        f"{_listed(_pairs_shown(duplicates['within_class']))}")
    if duplicates["across_train_val"]:
        n = len(duplicates["across_train_val"])
        warnings.append(f"{_plural(n, 'validation image')} also {_verb(n, 'appears', 'appear')} in the "
                        f"training set: {_listed(_pairs_shown(duplicates['across_train_val']))}; "
                        "they make validation accuracy look better than it is")
    if report["tiny"]:
        n = len(report["tiny"])
        warnings.append(f"{_plural(n, 'image')} {_verb(n, 'is', 'are')} smaller than {tiny} px: "
                        f"{_listed([_short(t['path']) for t in report['tiny']])}; they will be upscaled and blurry")
    if report["refused"]:
        n = len(report["refused"])
        warnings.append(f"{_plural(n, 'file')} {_verb(n, 'was', 'were')} refused: "
                        f"{_listed([r['name'] + ' (' + r['reason'] + ')' for r in report['refused']])}")
    return warnings


def _val_warnings(dataset: Dataset, val: Dataset | None) -> list[str]:
    if val is None:
        return []
    warnings = []
    if extra := sorted(set(val.classes) - set(dataset.classes)):
        warnings.append(f"the validation set has classes the training set lacks: {_listed(extra)}")
    if missing := sorted(set(dataset.classes) - set(val.classes)):
        warnings.append(f"the validation set has no images of: {_listed(missing)}")
    return warnings


def _pairs_shown(pairs: list[list[str]]) -> list[str]:
    return [f"{_short(a)} = {_short(b)}" for a, b in pairs]


def _short(path: str) -> str:
    return path.removeprefix("images/")


def _listed(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------- split

def stratified_split(labels: list[int], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified split into sorted (train indices, val indices).

    Each class sends n * val_fraction images (rounded half up) to val, but at least 1 to each side when it
    has 2 or more (a lone image goes to train). Each class is shuffled by its own seeded generator,
    so adding a class leaves the other classes' splits as they were.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    indices_of = defaultdict(list)
    for index, label in enumerate(labels):
        indices_of[label].append(index)
    train, val = [], []
    for label, indices in sorted(indices_of.items()):
        shuffled = list(indices)
        random.Random(f"{seed}/{label}").shuffle(shuffled)
        n = len(shuffled)
        n_val = 0 if n < 2 else min(max(math.floor(n * val_fraction + 0.5), 1), n - 1)
        val += shuffled[:n_val]
        train += shuffled[n_val:]
    return sorted(train), sorted(val)


def stratified_folds(labels: list[int], k: int = 5, seed: int = 0) -> list[list[int]]:
    """Seeded stratified k-fold partition: each class's shuffled images dealt round-robin into k folds.

    Every image is in exactly one fold; for cross-validation, each fold is in turn the validation set.
    """
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    indices_of = defaultdict(list)
    for index, label in enumerate(labels):
        indices_of[label].append(index)
    folds = [[] for _ in range(k)]
    offset = 0
    for label, indices in sorted(indices_of.items()):
        shuffled = list(indices)
        random.Random(f"{seed}/{label}").shuffle(shuffled)
        for j, index in enumerate(shuffled):
            folds[(offset + j) % k].append(index)
        offset += len(shuffled)  # start the next class where this one stopped, so folds stay even
    return [sorted(f) for f in folds]


# ---------------------------------------------------------------- decoded-image cache

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
