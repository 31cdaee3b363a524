"""Unlabelled images (a target domain: where the model will be used), ingested as safely as training data.

Any layout is accepted: loose files, nested folders, a zip or an upload; folder names mean nothing.
Every file goes through the same checks as a labelled dataset's (bounded decoding, archive limits,
escaping paths, links, zip bombs), and every refusal is recorded with its reason. The accepted images
are stored under one pseudo-class, UNLABELLED, so the rest of tl_core reads them as any dataset.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from ...ops.storage import atomic_write_json, workspace_root
from .ingest import (MAX_ZIP_BYTES, MAX_ZIP_MEMBERS, MAX_ZIP_RATIO, _basename, _Entry, ingested_before, zip_members,
                     _fingerprint, _is_clutter, _new_id, _published_or_removed, _refused_note, _store_entries,
                     _walk_folder)
from .store import Dataset, DatasetError, _from_manifest

UNLABELLED = "unlabelled"  # the one pseudo-class of an unlabelled dataset


def ingest_unlabelled_folder(src: str | Path, name: str | None = None, workspace: Path | None = None, *,
                             progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Ingest every image below folder `src`, whatever its layout; bad files are refused, not fatal."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    files, _ = _walk_folder(src)
    source = {"kind": "folder", "path": str(src.resolve()), "fingerprint": _fingerprint(src, files),
              "unlabelled": True}
    return _ingest_unlabelled(_entries(files), name or src.resolve().name, source, workspace, progress)


def ingest_unlabelled_or_reuse_folder(src: str | Path, workspace: Path | None = None) -> Dataset:
    """The unlabelled dataset already ingested from `src` if its files are unchanged, else a new ingest."""
    return ingested_before(src, {"unlabelled": True}, workspace) or ingest_unlabelled_folder(src, workspace=workspace)


def ingest_unlabelled_zip(src: str | Path | bytes, name: str | None = None, workspace: Path | None = None, *,
                          max_members: int = MAX_ZIP_MEMBERS, max_total_bytes: int = MAX_ZIP_BYTES,
                          max_ratio: float = MAX_ZIP_RATIO) -> Dataset:
    """Ingest every image of a zip, any layout, with the archive limits of a labelled zip."""
    label = "archive" if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).name
    with zip_members(src, label, max_members, max_total_bytes, max_ratio) as (files, _):
        return _ingest_unlabelled(_entries(files), name or Path(label).stem,
                                  {"kind": "zip", "file": label, "unlabelled": True}, workspace, None)


def ingest_unlabelled_files(files: list[tuple], name: str | None = None, workspace: Path | None = None) -> Dataset:
    """Ingest uploaded files given as (file name, bytes), as an upload widget hands them over."""
    entries = [_Entry(file_name, UNLABELLED, partial(bytes, data))
               for file_name, data, *_ in files if not _is_clutter((_basename(file_name),))]
    return _ingest_unlabelled(entries, name or "target images", {"kind": "upload", "files": len(files),
                                                                  "unlabelled": True}, workspace, None)


def _entries(files) -> list[_Entry]:
    entries = []
    for file in files:
        if file.refusal is not None:  # a dangerous member is reported even when it looks like clutter
            entries.append(_Entry(file.name, None, None, file.refusal))
        elif not _is_clutter(file.parts):
            entries.append(_Entry(file.name, UNLABELLED, file.read))
    return entries


def _ingest_unlabelled(entries: list[_Entry], name: str, source: dict, workspace: Path | None,
                       progress) -> Dataset:
    dataset_id, created = _new_id()
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    building = datasets_dir / f".{dataset_id}.partial"
    with _published_or_removed(building):
        items, refused = _store_entries(entries, building, progress)
        if not items:
            raise DatasetError(f"no usable image{_refused_note(refused)}", refused)
        manifest = {"id": dataset_id, "name": name, "created": created, "classes": [UNLABELLED],
                    "items": items, "refused": refused, "source": source}
        atomic_write_json(building / "manifest.json", manifest)
    return _from_manifest(datasets_dir / dataset_id, manifest)
