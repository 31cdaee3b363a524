"""Dataset versions: relabel, move, drop or add images as a NEW dataset; the old one stays as it was.

A run names the dataset it trained on, so a dataset is never edited in place: the cleaned or grown
set is a new dataset (new id) whose manifest records its `parent` and the `changes` made, one record
each ({"action": "relabel" | "drop" | "add", ...}). Unchanged images are linked (or copied), not decoded
again: they were checked when the parent was made. Added images go through ingest's checks.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from ...ops.storage import atomic_write_json, write_bytes
from .images import ImageRefused, _decode, _read_source
from .ingest import (_VALIDATE_DRAFT, _basename, _check_usable, _clean_label, _new_id, _published_or_removed,
                     _UniqueNames)
from .store import Dataset, DatasetError, _from_manifest

ACTIONS = ("relabel", "drop", "add")


def new_version(dataset: Dataset, *, relabel: Mapping[str, str] | None = None, drop: Iterable[str] = (),
                add: Iterable[tuple] = (), name: str | None = None) -> Dataset:
    """A new dataset beside `dataset` with images relabelled (moved to another class, a new one allowed),
    dropped, or added from image files as (file, label); `dataset` is left intact.

    Images are named by their path in `dataset` (relative, "images/cat/a.jpg", or absolute under its root).
    A relabel to the label an image already has changes nothing and is not recorded.
    """
    if dataset.tasks:
        raise DatasetError(f"{dataset.name!r} is labelled by a table of tasks: edit its labels table and upload "
                           "it again; versions are made of datasets of class folders")
    relabel = {_item_path(dataset, path): _label(label, path) for path, label in (relabel or {}).items()}
    dropped = {_item_path(dataset, path) for path in drop}
    if both := sorted(set(relabel) & dropped):
        raise DatasetError(f"{both[0]}: both relabelled and dropped; choose one")
    by_path = {item["path"]: item for item in dataset.items}
    relabel = {path: label for path, label in relabel.items() if by_path[path]["label"] != label}
    added = [_added_item(file, label) for file, label in add]
    if not (relabel or dropped or added):
        raise DatasetError(f"no changes: the dataset {dataset.name!r} stays as it is")

    kept = [dict(item) for item in dataset.items if item["path"] not in dropped and item["path"] not in relabel]
    placement = _Placement(dataset.items, kept)
    changes = [{"action": "drop", "path": path, "label": by_path[path]["label"]} for path in sorted(dropped)]
    items = list(kept)
    for path, label in sorted(relabel.items()):
        moved = {**by_path[path], "label": label, "path": placement.place(label, Path(path).name)}
        moved.pop("subfolder", None)
        items.append(moved)
        changes.append({"action": "relabel", "path": path, "new_path": moved["path"],
                        "from": by_path[path]["label"], "to": label})
    for item, data, source in added:
        item["path"] = placement.place(item["label"], _basename(source))
        items.append(item)
        changes.append({"action": "add", "source": source, "path": item["path"], "label": item["label"]})
    _check_usable(Counter(item["label"] for item in items), [])
    items.sort(key=lambda item: (item["label"], item["path"]))
    return _publish(dataset, items, changes, name, {item["path"]: data for item, data, _ in added},
                    {moved: path for path, moved in ((c["path"], c["new_path"]) for c in changes
                                                     if c["action"] == "relabel")})


def describe_changes(changes: list[dict]) -> str:
    """"2 relabelled, 1 dropped, 3 added": a version's changes in words."""
    counts = Counter(change.get("action") for change in changes)
    words = {"relabel": "relabelled", "drop": "dropped", "add": "added"}
    return ", ".join(f"{counts[action]} {words[action]}" for action in ACTIONS if counts[action]) or "no changes"


def _item_path(dataset: Dataset, path) -> str:
    """The manifest path of one of `dataset`'s images, given relative to its root or as an absolute path."""
    known = {item["path"] for item in dataset.items}
    given = Path(path)
    candidates = [given.as_posix()]
    if given.is_absolute():
        for root in (dataset.root, dataset.root.resolve()):
            for path_form in (given, given.resolve()):
                try:
                    candidates.append(path_form.relative_to(root).as_posix())
                except ValueError:
                    pass
    for candidate in candidates:
        if candidate in known:
            return candidate
    raise DatasetError(f"{path}: not an image of the dataset {dataset.name!r}")


def _label(label, path) -> str:
    label = _clean_label(str(label or ""))
    if not label:
        raise DatasetError(f"{path}: no class given to move it to")
    return label


def _added_item(file, label) -> tuple[dict, bytes, str]:
    """(manifest item without its path, the bytes, the file's name) of an image to add, checked as ingest does."""
    source = str(file)
    label = _label(label, source)
    try:
        data = _read_source(file, source)
        _, (width, height) = _decode(data, source, _VALIDATE_DRAFT, None)
    except ImageRefused as refusal:
        raise DatasetError(f"{source}: {refusal.reason}; nothing was added",
                           [{"name": source, "reason": refusal.reason}]) from None
    return ({"label": label, "sha256": hashlib.sha256(data).hexdigest(), "width": width, "height": height,
             "bytes": len(data)}, data, source)


class _Placement:
    """Where a moved or added image goes: its class's folder (a new, unused folder for a new class), under a
    name no image kept there already has."""

    def __init__(self, all_items: list[dict], kept: list[dict]):
        self.folders = _UniqueNames()
        self.folder_of: dict[str, str] = {}
        self.names: dict[str, _UniqueNames] = {}
        for item in all_items:
            folder = _folder(item["path"])
            self.folders.claim(folder)
            self.folder_of.setdefault(item["label"], folder)
        for item in kept:
            self._names(_folder(item["path"])).claim(Path(item["path"]).name)

    def _names(self, folder: str) -> _UniqueNames:
        return self.names.setdefault(folder, _UniqueNames())

    def place(self, label: str, file_name: str) -> str:
        if label not in self.folder_of:
            self.folder_of[label] = self.folders.claim(label)
        folder = self.folder_of[label]
        return f"images/{folder}/{self._names(folder).claim(file_name)}"


def _folder(item_path: str) -> str:
    parts = Path(item_path).parts
    return parts[1] if len(parts) > 2 else ""


def _publish(parent: Dataset, items: list[dict], changes: list[dict], name: str | None, new_bytes: dict[str, bytes],
             moved_from: dict[str, str]) -> Dataset:
    """Write the version's folder beside its parent's (so a classroom user's versions stay theirs)."""
    dataset_id, created = _new_id()
    datasets_dir = parent.root.parent
    version = int(parent.source.get("version", 1)) + 1 if parent.source.get("kind") == "version" else 2
    base = parent.source.get("base", parent.name) if parent.source.get("kind") == "version" else parent.name
    building = datasets_dir / f".{dataset_id}.partial"
    with _published_or_removed(building):
        for item in items:
            target = building / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if item["path"] in new_bytes:
                write_bytes(target, new_bytes[item["path"]])
                continue
            original = parent.root / moved_from.get(item["path"], item["path"])
            try:
                os.link(original, target)
            except OSError:
                write_bytes(target, original.read_bytes())
        manifest = {"id": dataset_id, "name": name or f"{base} v{version}", "created": created,
                    "classes": sorted({item["label"] for item in items}), "items": items,
                    "refused": list(parent.refused),
                    "source": {"kind": "version", "of": parent.id, "version": version, "base": base},
                    "parent": parent.id, "changes": changes}
        atomic_write_json(building / "manifest.json", manifest)
    return _from_manifest(datasets_dir / dataset_id, manifest)
