"""Anomaly data: good images (and optionally labelled defects with masks), ingested safely into the workspace.

Three layouts are read, the field's convention first:
  MVTec AD   train/good/, test/good/, test/<defect>/, ground_truth/<defect>/<name>_mask.png
  good/      good/ beside optional defect folders (scratch/, stain/...) and an optional ground_truth/
  plain      a folder of good images, any depth
Every file goes through tl_core.data.datasets' checks (bounded decoding, archive limits, escaping paths);
refused files are listed with the reason, never silently dropped. Masks that match no image, or whose size
differs from their image's, are listed and left out (the image keeps its image-level label).
The dataset keeps tl_core's manifest; each item adds "split" (train | test); manifest["anomaly"] holds the
masks and the notes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from tl_core.data.datasets import DatasetError, load_dataset, open_image
from tl_core.data.datasets.ingest import (_basename, _Entry, _File, _fingerprint, _is_clutter, _new_id,
                                          _published_or_removed, _refused_note, _store_entries, _walk_folder,
                                          ingested_before, zip_members)
from tl_core.ops.storage import atomic_write_json, workspace_root

GOOD = "good"
MIN_GOOD_IMAGES = 5  # below this a memory of "normal" is a guess; the floor
MASKS = "ground_truth"
_LAYOUT_FOLDERS = {"train", "test", GOOD, MASKS}


@dataclass
class Sample:
    """One image of a labelled anomaly set: its file, "good" or its defect type, and its mask when known."""
    path: Path
    label: str
    mask: Path | None = None
    split: str = "test"

    @property
    def anomalous(self) -> bool:
        return self.label != GOOD


@dataclass
class Layout:
    """A folder read as anomaly data: what is good, what is a defect, which masks go where, what was refused."""
    kind: str  # "mvtec" | "good_folder" | "plain"
    train: list = field(default_factory=list)  # _File of good training images
    test: list = field(default_factory=list)  # (_File, label)
    masks: dict = field(default_factory=dict)  # (label, image stem) → _File
    refused: list = field(default_factory=list)  # {"name", "reason"}


def detect_layout(folder: str | Path) -> bool:
    """True when `folder` holds anomaly data in a layout this kind reads (MVTec AD or a good/ folder)."""
    folder = Path(folder)
    return (folder / "train" / GOOD).is_dir() or (folder / GOOD).is_dir()


def read_layout(files: list[_File]) -> Layout:
    """Sort a tree's files into good training images, labelled test images and masks (see module doc)."""
    usable = [f for f in files if f.refusal is None and not _is_clutter(f.parts)]
    layout = Layout(kind="plain", refused=[{"name": f.name, "reason": f.refusal} for f in files if f.refusal])
    depth = _wrapper_depth([f.parts for f in usable])
    usable = [f._replace(parts=f.parts[depth:]) for f in usable]
    tops = {f.parts[0] for f in usable if len(f.parts) > 1}
    if any(f.parts[:2] == ("train", GOOD) and len(f.parts) > 2 for f in usable):
        layout.kind = "mvtec"
    elif GOOD in tops:
        layout.kind = "good_folder"
    for file in usable:
        _place(layout, file)
    return layout


def _wrapper_depth(parts_list: list[tuple[str, ...]]) -> int:
    """How many wrapper folders (a zip's `bottle/`) sit above the layout's own folders."""
    depth = 0
    while parts_list and all(len(p) > depth + 1 for p in parts_list) and len({p[depth] for p in parts_list}) == 1 \
            and parts_list[0][depth] not in _LAYOUT_FOLDERS:
        depth += 1
    return depth


def _place(layout: Layout, file: _File) -> None:
    parts = file.parts
    if layout.kind == "plain":
        layout.train.append(file)
        return
    if parts[0] == MASKS and len(parts) >= 3:
        layout.masks[(parts[1], _mask_stem(parts[-1]))] = file
        return
    if layout.kind == "mvtec":
        if parts[:2] == ("train", GOOD) and len(parts) > 2:
            layout.train.append(file)
        elif parts[0] == "test" and len(parts) > 2:
            layout.test.append((file, parts[1]))
        else:
            where = "train/ holds only good/ images" if parts[0] == "train" else \
                "outside train/good, test/<type> and ground_truth/<type>"
            layout.refused.append({"name": file.name, "reason": f"{where} in the MVTec AD layout; not used"})
        return
    if parts[0] == GOOD and len(parts) > 1:
        layout.train.append(file)
    elif len(parts) > 1:
        layout.test.append((file, parts[0]))
    else:
        layout.refused.append({"name": file.name, "reason": "loose file beside good/: put it in good/ or in a "
                                                            "folder named after its defect"})


def _mask_stem(file_name: str) -> str:
    stem = Path(file_name).stem
    return stem[:-len("_mask")] if stem.endswith("_mask") else stem


# ---------------------------------------------------------------- ingest into the workspace

def ingest_anomaly_folder(src: str | Path, name: str | None = None, workspace: Path | None = None):
    """Ingest anomaly data from a folder in any of the three layouts (module doc); a tl_core Dataset."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    files, _ = _walk_folder(src)
    source = {"kind": "folder", "path": str(src.resolve()), "fingerprint": _fingerprint(src, files), "anomaly": True}
    return _ingest_layout(read_layout(files), name or src.resolve().name, source, workspace)


def ingest_anomaly_or_reuse_folder(src: str | Path, workspace: Path | None = None):
    """The anomaly dataset already ingested from `src` when its files are unchanged, else a new ingest."""
    return ingested_before(src, {"anomaly": True}, workspace) or ingest_anomaly_folder(src, workspace=workspace)


def ingest_anomaly_zip(data: bytes, name: str = "archive", workspace: Path | None = None):
    """Ingest anomaly data from a zip (any of the three layouts), with the archive limits of tl_core.data.datasets."""
    with zip_members(data, name) as (files, _):
        return _ingest_layout(read_layout(files), Path(name).stem, {"kind": "zip", "file": name, "anomaly": True},
                              workspace)


def ingest_anomaly_tree(files: list[tuple], name: str = "upload", workspace: Path | None = None):
    """Ingest a folder upload: (path below the chosen folder, bytes) pairs, read in any of the three layouts."""
    tree = [_File(path, tuple(p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".", "..")),
                  partial(bytes, data)) for path, data, *_ in files]
    return _ingest_layout(read_layout(tree), name, {"kind": "upload", "files": len(files), "anomaly": True},
                          workspace)


def ingest_anomaly_files(good: list[tuple], defects: list[tuple] = (), masks: list[tuple] = (),
                         name: str = "upload", workspace: Path | None = None):
    """Ingest uploads: good (file name, bytes); defects (file name, bytes, defect type); masks (file name,
    bytes, defect type), a mask matched to the defect image of the same name (or `<name>_mask`)."""
    layout = Layout(kind="upload")
    for file_name, data, *_ in good:
        layout.train.append(_File(file_name, (GOOD, _basename(file_name)), partial(bytes, data)))
    for file_name, data, label in defects:
        layout.test.append((_File(file_name, (label, _basename(file_name)), partial(bytes, data)), label or "defect"))
    for file_name, data, label in masks:
        layout.masks[(label or "defect", _mask_stem(_basename(file_name)))] = \
            _File(file_name, (MASKS, label, _basename(file_name)), partial(bytes, data))
    return _ingest_layout(layout, name, {"kind": "upload", "files": len(good) + len(defects) + len(masks),
                                         "anomaly": True}, workspace)


def _ingest_layout(layout: Layout, name: str, source: dict, workspace: Path | None):
    """Store the layout's images and masks as a new dataset; refuse too few good images with the reason."""
    entries = [_Entry(f.name, GOOD, f.read, None, None, {"split": "train"}) for f in layout.train]
    entries += [_Entry(f.name, label, f.read, None, None, {"split": "test", "source_name": f.name})
                for f, label in layout.test]
    dataset_id, created = _new_id()
    datasets_dir = Path(workspace or workspace_root()) / "datasets"
    building = datasets_dir / f".{dataset_id}.partial"
    with _published_or_removed(building):
        items, refused = _store_entries(entries, building, None)
        refused = layout.refused + refused
        _check_enough_good(items, refused)
        masks, mask_problems = _store_masks(layout, items, building)
        notes = _notes(layout.kind, items, masks, mask_problems)
        manifest = {"id": dataset_id, "name": name, "created": created,
                    "classes": sorted({item["label"] for item in items}), "items": items, "refused": refused,
                    "source": source, "notes": notes,
                    "anomaly": {"layout": layout.kind, "masks": masks, "mask_problems": mask_problems}}
        atomic_write_json(building / "manifest.json", manifest)
    return load_dataset(datasets_dir / dataset_id)


def _check_enough_good(items: list[dict], refused: list[dict]) -> None:
    good = [item for item in items if item["split"] == "train"]
    if len(good) < MIN_GOOD_IMAGES:
        shown = f" ({', '.join(Path(item['path']).name for item in good)})" if good else ""
        raise DatasetError(f"only {len(good)} good image{'s' if len(good) != 1 else ''}{shown}: anomaly detection "
                           f"learns what normal looks like from at least {MIN_GOOD_IMAGES} good images "
                           f"(10 or more is better){_refused_note(refused)}", refused)


def _store_masks(layout: Layout, items: list[dict], building: Path) -> tuple[list[dict], list[dict]]:
    """Copy each mask that matches a stored defect image of its size; list every other one with the reason."""
    image_of = {}
    for (file, label), stored in zip(layout.test, _test_items_in_entry_order(layout, items)):
        if stored is not None:
            image_of[(label, Path(_basename(file.name)).stem)] = stored
    given = {(label, Path(_basename(file.name)).stem) for file, label in layout.test}
    entries, problems = [], []
    for (label, stem), file in sorted(layout.masks.items()):
        target = image_of.get((label, stem))
        if target is None:
            reason = "its image was refused" if (label, stem) in given else f"no image {label}/{stem}.* to go with it"
            problems.append({"name": file.name, "reason": f"mask not used: {reason}"})
            continue
        entries.append(_Entry(file.name, label, file.read, None, None,
                              {"image": target["path"], "image_size": [target["width"], target["height"]]}))
    stored, refused = _store_entries(entries, building / MASKS, None)
    problems += [{"name": r["name"], "reason": f"mask not used: {r['reason']}"} for r in refused]
    masks = []
    for record in stored:
        width, height = record["image_size"]
        if (record["width"], record["height"]) != (width, height):
            problems.append({"name": record["path"], "reason": f"mask not used: {record['width']}×{record['height']}"
                                                               f" px, its image {record['image']} is {width}×{height}"})
            continue
        masks.append({"path": f"{MASKS}/{record['path']}", "image": record["image"]})
    return masks, problems


def _test_items_in_entry_order(layout: Layout, items: list[dict]) -> list[dict | None]:
    """The stored item of each labelled test file, in the layout's order (None where it was refused)."""
    by_source = {item["source_name"]: item for item in items if "source_name" in item}
    return [by_source.get(file.name) for file, _ in layout.test]


def _notes(kind: str, items: list[dict], masks: list[dict], mask_problems: list[dict]) -> list[str]:
    """What the user should know about the data as read: layout, defect types without masks, mask problems."""
    good = sum(item["split"] == "train" for item in items)
    tests = [item for item in items if item["split"] == "test"]
    words = {"mvtec": "MVTec AD layout", "good_folder": "a good/ folder", "plain": "a folder of good images",
             "upload": "uploaded images"}[kind]
    notes = [f"read as {words}: {good} good training images, {len(tests)} labelled test images"]
    masked = {m["image"] for m in masks}
    for label in sorted({item["label"] for item in tests if item["label"] != GOOD}):
        of_type = [item for item in tests if item["label"] == label]
        with_mask = sum(item["path"] in masked for item in of_type)
        if with_mask == 0:
            notes.append(f"{label}: no masks, so image scores only (no pixel AUROC) for this defect type")
        elif with_mask < len(of_type):
            notes.append(f"{label}: {len(of_type) - with_mask} of {len(of_type)} images have no mask")
    if mask_problems:
        notes.append(f"{len(mask_problems)} mask(s) not used (listed with the reason)")
    return notes


# ---------------------------------------------------------------- reading a dataset or a test folder back

def good_paths(dataset_dir: str | Path) -> list[Path]:
    """The good training images of an ingested anomaly dataset."""
    dataset = load_dataset(dataset_dir)
    return [dataset.root / item["path"] for item in dataset.items if item.get("split", "train") == "train"]


def labelled_samples(dataset_dir: str | Path) -> list[Sample]:
    """The labelled test images an ingested dataset holds (test/good and defects), with their masks."""
    dataset = load_dataset(dataset_dir)
    mask_of = {m["image"]: dataset.root / m["path"] for m in _anomaly_record(dataset_dir).get("masks", [])}
    return [Sample(dataset.root / item["path"], item["label"], mask_of.get(item["path"]))
            for item in dataset.items if item.get("split") == "test"]


def _anomaly_record(dataset_dir) -> dict:
    from tl_core.ops.storage import read_json

    return (read_json(Path(dataset_dir) / "manifest.json") or {}).get("anomaly", {})


def mask_problems(dataset_dir: str | Path) -> list[dict]:
    """Masks of an ingested dataset that were left out, with the reason."""
    return list(_anomaly_record(dataset_dir).get("mask_problems", []))


def read_test_folder(folder: str | Path) -> tuple[list[Sample], list[dict], list[str]]:
    """A test folder read in place (no copy): samples, refused files and notes.

    `folder` holds good/ and <defect>/ folders (MVTec's test/), or is a category folder holding test/;
    masks come from ground_truth/ inside it or beside it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    if (folder / "test").is_dir():
        folder = folder / "test"
    masks_dir = next((d for d in (folder / MASKS, folder.parent / MASKS) if d.is_dir()), None)
    samples, refused, notes = [], [], []
    files, _ = _walk_folder(folder)
    for file in files:
        if _is_clutter(file.parts) or file.parts[0] == MASKS:
            continue
        if len(file.parts) < 2:
            refused.append({"name": file.name, "reason": "loose file: put it in good/ or in a folder named after "
                                                         "its defect"})
            continue
        samples.append(Sample(folder.joinpath(*file.parts), file.parts[0]))
    mask_files = {}
    if masks_dir is not None:
        for file in _walk_folder(masks_dir)[0]:
            if len(file.parts) >= 2 and not _is_clutter(file.parts):
                mask_files[(file.parts[0], _mask_stem(file.parts[-1]))] = masks_dir.joinpath(*file.parts)
    used = set()
    for sample in samples:
        key = (sample.label, sample.path.stem)
        if sample.anomalous and key in mask_files:
            sample.mask = mask_files[key]
            used.add(key)
    for key in sorted(set(mask_files) - used):
        refused.append({"name": str(mask_files[key].relative_to(masks_dir.parent)),
                        "reason": "mask not used: no test image of that name"})
    defect_types = sorted({s.label for s in samples if s.anomalous})
    if masks_dir is None and defect_types:
        notes.append("no ground_truth/ folder inside or beside the test folder: image scores only, no pixel AUROC")
    else:
        for label in defect_types:
            if not any(s.mask for s in samples if s.label == label):
                notes.append(f"{label}: no masks, so image scores only for this defect type")
    return samples, refused, notes


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask as a boolean array (any non-black pixel is defect), optionally resized to (width, height)."""
    from PIL import Image

    mask = open_image(path).convert("L")
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


