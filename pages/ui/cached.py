"""What pages compute from a folder's files (a run's, a dataset's), kept between reruns while the files are unchanged.

A classroom server reruns a page for every click of every user; a run's figures and its parsed predictions do
not change between those reruns. Each value here is kept under a stamp of its folder (tl_core.ops.filecache:
every entry's inode, modification time and size), taken again on every call, so a run that trains on, or a
dataset made again, is read again on the next rerun. One server process shares these between its sessions.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from tl_core.ops.filecache import file_stamp, folder_stamp

MAX_KEPT = 4096  # thumbnails are a few kB, figures a few tens
_kept: OrderedDict = OrderedDict()  # key -> (stamp, value)
_lock = threading.Lock()


def _get(key: tuple, stamp, make: Callable[[], object]):
    with _lock:
        kept = _kept.get(key)
        if kept is not None:
            _kept.move_to_end(key)
    if kept is None or kept[0] != stamp:
        kept = (stamp, make())
        with _lock:
            _kept[key] = kept
            while len(_kept) > MAX_KEPT:
                _kept.popitem(last=False)
    return kept[1]


def figure(folder: str | Path, build: Callable[[], object], *name):
    """The plotly figure build() makes from `folder`'s files, made again only when they change. `name` tells the
    folder's figures apart (and holds whatever else the figure depends on, such as a chosen cell). The figure
    is shared: st.plotly_chart copies it, and nobody may change it."""
    return _get(("figure", str(folder), *name), folder_stamp(folder), build)


def figure_for(key: tuple, build: Callable[[], object]):
    """The figure build() makes, kept under `key`, which must name all it depends on: for a live run, the run and
    how many events it has read (its event log only grows, so that many events are the same events)."""
    return _get(("keyed", *key), None, build)


def from_folder(function: Callable, folder: str | Path, *args):
    """function(folder, *args), computed again only when the folder's files change; each caller gets a copy."""
    value = _get(("value", function.__module__, function.__qualname__, str(folder), *args), folder_stamp(folder),
                 lambda: function(folder, *args))
    return copy.deepcopy(value)


def thumbnail_jpeg(path: str | Path, size: int) -> bytes | None:
    """A JPEG of the image at most `size` pixels wide and high, for st.image(..., width=size,
    output_format="JPEG"): drawn at its own size and format, Streamlit sends the bytes as they are, where a
    PIL image is encoded, decoded, resized and encoded again on every rerun. None when the file cannot be read."""
    return _get(("thumbnail", str(path), size), file_stamp(path), lambda: _encode_thumbnail(path, size))


def _encode_thumbnail(path: str | Path, size: int) -> bytes | None:
    import io

    from tl_core.data.datasets import ImageRefused, open_image

    try:
        image = open_image(path, draft_size=2 * size)
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=85)
    except (ImageRefused, OSError, ValueError):
        return None
    return out.getvalue()


def thumbnail_strip(paths: list, size: int, gap: int = 8, hashes: list[str] | None = None) -> bytes | None:
    """One PNG of the images side by side, each `size` pixels wide, `gap` transparent pixels apart: one element
    for a class's row of thumbnails where one per image cost Streamlit a format check and a media file each on
    every rerun. None when no image can be read.

    `hashes`, the images' sha256 as a dataset's manifest records them, key the strip by content: a class whose
    students each took the sample share one strip (their copies' paths differ), and a dataset's files never
    change, so nothing is stat'ed."""
    if hashes and len(hashes) == len(paths) and all(hashes):
        return _get(("strip-of", tuple(hashes), size, gap), None, lambda: _encode_strip(paths, size, gap))
    key = ("strip", tuple(map(str, paths)), size, gap)
    return _get(key, tuple(file_stamp(path) for path in paths), lambda: _encode_strip(paths, size, gap))


def _encode_strip(paths: list, size: int, gap: int) -> bytes | None:
    import io

    from PIL import Image

    from tl_core.data.datasets import ImageRefused, open_image

    tiles = []
    for path in paths:
        try:
            image = open_image(path, draft_size=2 * size)
            # `size` wide, as st.image(..., width=size) showed each (a 28-pixel image too)
            height = max(1, round(image.height * size / image.width))
            tiles.append(image.convert("RGBA").resize((size, height), Image.Resampling.LANCZOS))
        except (ImageRefused, OSError, ValueError):
            continue  # one unreadable image leaves a gap in the row, never the row
    if not tiles:
        return None
    strip = Image.new("RGBA", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    out = io.BytesIO()
    strip.save(out, format="PNG", compress_level=1)  # a few kB either way; level 6 cost 6 ms a strip
    return out.getvalue()
