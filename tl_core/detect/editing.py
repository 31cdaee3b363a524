"""Boxes drawn or corrected by hand (the app's editor, for small sets): a new box dataset from pictures alone,
and a new version of a box dataset with one picture's boxes replaced. A dataset a run trained on never
changes under it: every edit makes a new dataset (its record names its parent)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tl_core.data.datasets.ingest import _new_id
from tl_core.detect.formats import PREFIX, RECORD, _datasets_dir, _store, load_boxset
from tl_core.ops.storage import atomic_write_json, read_json


def new_boxset(pictures: list[tuple[str, bytes]], classes: list[str], name: str = "drawn",
               workspace: Path | None = None) -> Path:
    """A box dataset of uploaded pictures (name, bytes), no boxes yet, the given class names; its folder.
    Pictures that are no images are refused with the reason, as in any import."""
    classes = [c.strip() for c in classes if c.strip()]
    if not classes:
        raise ValueError("name at least one class of object to draw boxes for")
    scratch = Path(tempfile.mkdtemp(prefix=".drawn-", dir=_datasets_dir(workspace)))
    try:
        annotated = {}
        for picture_name, data in pictures:
            safe = Path(picture_name).name or "picture"
            (scratch / safe).write_bytes(data)
            annotated[safe] = []
        return _store(scratch, "drawn", list(dict.fromkeys(classes)), annotated, [], [], {"kind": "drawn"}, name,
                      workspace)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def with_boxes(root: str | Path, file: str, boxes: list[dict], classes: list[str] | None = None,
               workspace: Path | None = None) -> Path:
    """A new version of the box dataset in `root` where picture `file` has `boxes` ([{"label", "box"}]);
    `classes` replaces the class list when given (new names drawn in the editor)."""
    boxset = load_boxset(root)
    record = read_json(Path(root) / RECORD)
    images = [dict(image) for image in record["images"]]
    target = next((image for image in images if image["file"] == file), None)
    if target is None:
        raise ValueError(f"{file}: not a picture of this dataset")
    for item in boxes:
        x0, y0, x1, y1 = (float(v) for v in item["box"])
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"{item['label']}: a box must end after it starts (x1 > x0, y1 > y0)")
    target["boxes"] = [[round(float(v), 2) for v in item["box"]] for item in boxes]
    target["labels"] = [str(item["label"]) for item in boxes]
    names = list(dict.fromkeys([*(classes or boxset.classes), *target["labels"]]))
    dataset_id, created = _new_id()
    new_root = _datasets_dir(workspace) / f"{PREFIX}{dataset_id}"
    building = new_root.with_name(f".{new_root.name}.partial")
    shutil.copytree(Path(root) / "images", building / "images")
    atomic_write_json(building / RECORD, {**record, "id": dataset_id, "created": created, "classes": names,
                                          "images": images, "parent": Path(root).name,
                                          "source": {**record.get("source", {}), "fingerprint": None}})
    building.rename(new_root)
    return new_root
