"""Box datasets in: COCO JSON, the YOLO layout and Pascal VOC XML, from a folder or a zip, into one record.

The record (`BoxSet`) lives in `<workspace>/datasets/detect-<id>/`: the accepted pictures under `images/`
(byte for byte, unless too large: then resized, their boxes scaled alike) and `boxes.json`, which lists each
picture with its boxes as x0, y0, x1, y1 in the stored picture's pixels and their class names, every file
refused with its reason, and notes on what looked wrong (annotations of missing pictures, boxes in the
other convention). A class-folder dataset's manifest.json is absent on purpose: the classifier's lists skip it.

Layouts read:
- COCO: `annotations.json` (or one other .json with "images" and "annotations") beside `images/`;
  boxes are [x, y, width, height].
- YOLO: `images/**`, `labels/**/*.txt` (class cx cy w h, normalised), names from `data.yaml` or `classes.txt`;
  a picture without a label file is background, as in YOLO.
- Pascal VOC: `.xml` files (`Annotations/` or beside the pictures) naming their picture in <filename>.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tl_core.data.datasets.images import ImageRefused, open_image
from tl_core.data.datasets.ingest import (_fingerprint, _is_clutter, _new_id, _published_or_removed, _walk_folder,
                                          zip_members)
from tl_core.data.datasets.store import DatasetError
from tl_core.ops.storage import atomic_write_json, read_json, workspace_root

RECORD = "boxes.json"  # the dataset's record (a dataset file, not a run file)
PREFIX = "detect-"
MAX_SIDE = 2048  # larger pictures are stored resized to this longer side, boxes scaled alike
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUTS = ("coco", "yolo", "voc")


class AnnotationError(DatasetError):
    """An annotation file cannot be read; the message names the file and, where the parser knows it, the line."""


@dataclass
class BoxSet:
    """A detection dataset in the workspace."""

    root: Path
    classes: list[str]
    images: list[dict]  # {"file", "width", "height", "boxes": [[x0, y0, x1, y1]], "labels": [name], "scale"}
    refused: list[dict] = field(default_factory=list)  # {"name", "reason"}
    notes: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    layout: str = ""

    def path(self, image: dict) -> Path:
        return self.root / image["file"]


def load_boxset(root: str | Path) -> BoxSet:
    """The detection dataset in `root`."""
    root = Path(root)
    record = read_json(root / RECORD)
    if not isinstance(record, dict):
        raise DatasetError(f"{root}: no {RECORD} here; import a COCO, YOLO or VOC folder first")
    return BoxSet(root, list(record["classes"]), list(record["images"]), list(record.get("refused", [])),
                  list(record.get("notes", [])), dict(record.get("source", {})), record.get("layout", ""))


def detect_layout(folder: str | Path) -> str | None:
    """"coco", "yolo" or "voc" when `folder` (or its one wrapper folder) holds that layout, "zip" for an archive
    holding box annotations, else None (truthy exactly when the folder is this kind's: tl_core.kinds)."""
    folder = Path(folder)
    if folder.is_file():
        return "zip" if zipfile.is_zipfile(folder) and _zip_has_boxes(folder) else None
    root = _layout_root(folder)
    return _layout_of(root) if root else None


def _zip_has_boxes(path: Path) -> bool:
    """Whether an archive holds a box annotation file (looked up by name only: nothing is unpacked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [Path(n).name.lower() for n in archive.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n in ("annotations.json", "data.yaml", "data.yml", "classes.txt") or n.endswith(".xml") for n in names)


def ingest(src: str | Path, name: str | None = None, workspace: Path | None = None) -> Path:
    """Import a folder or zip in COCO, YOLO or VOC layout (reusing an identical earlier import); its folder."""
    src = Path(src)
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise DatasetError(f"{src.name}: neither a folder nor a zip archive")
        return _ingest_zip(src, name, workspace)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder")
    files, _ = _walk_folder(src)
    fingerprint = _fingerprint(src, files)
    for known in _boxsets(workspace):
        if known.source.get("fingerprint") == fingerprint:
            return known.root
    return _ingest_folder(src, {"kind": "folder", "path": str(src.resolve()), "fingerprint": fingerprint},
                          name or src.name, workspace)


def ingest_files(files: list[tuple[str, bytes]], name: str = "upload", workspace: Path | None = None) -> Path:
    """Import the files of an uploaded folder, each (its path below the chosen folder, bytes), as `ingest` does
    a folder; paths that would lead outside it are refused with the reason."""
    scratch = Path(tempfile.mkdtemp(prefix=".upload-", dir=_datasets_dir(workspace)))
    refused = []
    try:
        for path, data in files:
            parts = tuple(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
            if not parts or ".." in parts or path.startswith("/"):
                refused.append({"name": path, "reason": "path leads outside the uploaded folder; skipped for safety"})
                continue
            if _is_clutter(parts):
                continue
            target = scratch.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        digest = hashlib.sha256()
        for path, data in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        return _ingest_folder(scratch, {"kind": "upload", "name": name, "fingerprint": digest.hexdigest()}, name,
                              workspace, refused)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ingest_zip(src: Path, name: str | None, workspace: Path | None) -> Path:
    data = src.read_bytes()
    fingerprint = hashlib.sha256(data).hexdigest()
    for known in _boxsets(workspace):
        if known.source.get("fingerprint") == fingerprint:
            return known.root
    scratch = Path(tempfile.mkdtemp(prefix=".unzip-", dir=_datasets_dir(workspace)))
    try:
        refused = _unzip(data, src.name, scratch)
        return _ingest_folder(scratch, {"kind": "zip", "name": src.name, "fingerprint": fingerprint},
                              name or src.stem, workspace, refused)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unzip(data: bytes, label: str, dest: Path) -> list[dict]:
    """Unpack the archive's safe members into `dest`; the others, each with its reason."""
    refused = []
    with zip_members(data, label) as (files, _):
        for file in files:
            if _is_clutter(file.parts):
                continue
            if file.refusal:
                refused.append({"name": file.name, "reason": file.refusal})
                continue
            try:
                target = dest.joinpath(*file.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(file.read())
            except (ImageRefused, OSError) as error:
                refused.append({"name": file.name, "reason": str(error)})
    return refused


def _ingest_folder(src: Path, source: dict, name: str, workspace: Path | None, refused: list[dict] | None = None) -> Path:
    root = _layout_root(src)
    if root is None:
        raise DatasetError(f"{source.get('name') or src}: no box annotations found: expected images/ with "
                           "annotations.json (COCO), images/ with labels/ and data.yaml or classes.txt (YOLO), "
                           "or Pascal VOC .xml files")
    layout = _layout_of(root)
    classes, annotated, notes, bad = {"coco": _read_coco, "yolo": _read_yolo, "voc": _read_voc}[layout](root)
    return _store(root, layout, classes, annotated, notes, (refused or []) + bad, source, name, workspace)


# ---------------------------------------------------------------- layouts

def _layout_root(folder: Path) -> Path | None:
    """`folder`, or the one folder inside it (an archive's wrapper), whichever holds a layout."""
    if _layout_of(folder):
        return folder
    inner = [p for p in folder.iterdir() if p.is_dir() and not _is_clutter((p.name,))] if folder.is_dir() else []
    if len(inner) == 1 and _layout_of(inner[0]):
        return inner[0]
    return None


def _layout_of(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    if _coco_file(folder) is not None:
        return "coco"
    if (folder / "labels").is_dir() and ((folder / "data.yaml").is_file() or (folder / "classes.txt").is_file()
                                         or (folder / "data.yml").is_file()):
        return "yolo"
    if any(folder.glob("*.xml")) or any(folder.glob("Annotations/*.xml")):
        return "voc"
    return None


def _coco_file(folder: Path) -> Path | None:
    if (folder / "annotations.json").is_file():
        return folder / "annotations.json"
    for candidate in sorted(folder.glob("*.json")) + sorted(folder.glob("annotations/*.json")):
        try:
            head = candidate.read_text(errors="replace")[:4000]
        except OSError:
            continue
        if '"images"' in head and '"annotations"' in head:
            return candidate
    return None


def _parse_json(path: Path, rel: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{rel}: line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{rel}: not a text file (UTF-8 expected)") from None
    if not isinstance(value, dict):
        raise AnnotationError(f"{rel}: expected a JSON object with 'images', 'annotations' and 'categories'")
    return value


def _read_coco(root: Path):
    """COCO: (classes, {image path: [(label, box)]}, notes, refused)."""
    path = _coco_file(root)
    rel = path.relative_to(root).as_posix()
    data = _parse_json(path, rel)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{rel}: no '{key}' list")
    names = {c.get("id"): str(c.get("name", c.get("id"))) for c in data["categories"] if isinstance(c, dict)}
    images_dir = root / "images" if (root / "images").is_dir() else root
    by_id, sizes, notes, refused = {}, {}, [], []
    for entry in data["images"]:
        if not isinstance(entry, dict) or "file_name" not in entry or "id" not in entry:
            refused.append({"name": rel, "reason": f"an 'images' entry without id or file_name: {str(entry)[:80]}"})
            continue
        by_id[entry["id"]] = str(entry["file_name"])
        sizes[str(entry["file_name"])] = (entry.get("width"), entry.get("height"))
    annotated: dict[str, list] = {_image_path(images_dir, root, name): [] for name in by_id.values()}
    as_corners = outside = 0
    for ann in data["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            refused.append({"name": rel, "reason": f"annotation {ann.get('id') if isinstance(ann, dict) else ann}: "
                                                   "no bbox of four numbers"})
            continue
        if ann.get("image_id") not in by_id:
            refused.append({"name": rel, "reason": f"annotation {ann.get('id')}: image_id {ann.get('image_id')} "
                                                   "is not in 'images'"})
            continue
        file_name = by_id[ann["image_id"]]
        x, y, w, h = (float(v) for v in bbox)
        width, height = sizes[file_name]
        if width and height and (x + w > width + 1 or y + h > height + 1):
            outside += 1
            if x < w <= width + 1 and y < h <= height + 1:
                as_corners += 1
        label = names.get(ann.get("category_id"), f"unknown category {ann.get('category_id')}")
        annotated[_image_path(images_dir, root, file_name)].append((label, [x, y, x + w, y + h]))
    if outside:
        notes.append(f"{rel}: {outside} box(es) fall outside their picture" + (
            f"; {as_corners} of them would fit read as x0, y0, x1, y1: COCO's bbox is [x, y, width, height], "
            "so the file may hold corners instead" if as_corners else ""))
    return list(dict.fromkeys(names.values())), annotated, notes, refused


def _image_path(images_dir: Path, root: Path, file_name: str) -> str:
    """The picture's path relative to the layout's root, from a name relative to images/ (or already below root)."""
    name = file_name.replace("\\", "/").lstrip("/")
    if (root / name).is_file() and not (images_dir / name).is_file():
        return name
    return (images_dir / name).relative_to(root).as_posix()


def _read_yolo(root: Path):
    """YOLO: (classes, {image path: [(label, box)]}, notes, refused); boxes in pixels of the picture's size."""
    classes = _yolo_names(root)
    notes, refused, annotated = [], [], {}
    images_dir = root / "images" if (root / "images").is_dir() else root
    as_corners = outside = 0
    for picture in sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                          and not _is_clutter(p.relative_to(root).parts)):
        rel_image = picture.relative_to(images_dir)
        label_file = root / "labels" / rel_image.with_suffix(".txt")
        key = picture.relative_to(root).as_posix()
        annotated[key] = []
        if not label_file.is_file():
            continue  # YOLO's convention: no label file, a background picture
        try:
            width, height = Image.open(picture).size
        except Exception:  # unreadable pictures are refused when stored, with the reason
            continue
        for number, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{label_file.relative_to(root).as_posix()}: line {number}"
            try:
                k, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
            except (ValueError, TypeError):
                refused.append({"name": where, "reason": f"expected 'class cx cy w h', got {line[:60]!r}"})
                continue
            if len(parts) > 5:
                refused.append({"name": where, "reason": "more than five numbers (a segment or keypoints?); "
                                                        "the first five read as a box"})
            if cx + w / 2 > 1.01 or cy + h / 2 > 1.01 or cx - w / 2 < -0.01 or cy - h / 2 < -0.01:
                outside += 1
                if cx + w <= 1.01 and cy + h <= 1.01:
                    as_corners += 1
            label = classes[k] if 0 <= k < len(classes) else f"unknown class {k}"
            annotated[key].append((label, [(cx - w / 2) * width, (cy - h / 2) * height,
                                           (cx + w / 2) * width, (cy + h / 2) * height]))
    for label_file in sorted((root / "labels").rglob("*.txt")):
        rel = label_file.relative_to(root / "labels").with_suffix("")
        if not any((images_dir / rel).with_suffix(s).is_file() for s in IMAGE_SUFFIXES + tuple(
                s.upper() for s in IMAGE_SUFFIXES)):
            notes.append(f"labels/{rel.as_posix()}.txt: annotations for a missing picture (no images/{rel.as_posix()}.*)")
    if outside:
        notes.append(f"labels/: {outside} box(es) fall outside their picture" + (
            f"; {as_corners} would fit read as a corner and a size: YOLO's boxes are centre x, centre y, width, "
            "height" if as_corners else ""))
    return classes, annotated, notes, refused


def _yolo_names(root: Path) -> list[str]:
    for name in ("data.yaml", "data.yml"):
        path = root / name
        if path.is_file():
            import yaml

            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                raise AnnotationError(f"{name}{where}: not valid YAML ({getattr(error, 'problem', None) or error})") \
                    from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise AnnotationError(f"{name}: no 'names' list or table of class names")
    lines = (root / "classes.txt").read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _read_voc(root: Path):
    """Pascal VOC: (classes in order of appearance, {image path: [(label, box)]}, notes, refused)."""
    files = sorted(root.glob("Annotations/*.xml")) or sorted(root.glob("*.xml"))
    pictures = {p.name: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                and not _is_clutter(p.relative_to(root).parts)}
    classes, annotated, notes, refused, as_corners = {}, {}, [], [], 0
    for xml_file in files:
        rel = xml_file.relative_to(root).as_posix()
        try:
            tree = ET.parse(xml_file)
        except ET.ParseError as error:
            line, column = error.position
            raise AnnotationError(f"{rel}: line {line}, column {column + 1}: not valid XML") from None
        node = tree.getroot()
        file_name = (node.findtext("filename") or xml_file.with_suffix(".jpg").name).strip()
        picture = pictures.get(Path(file_name).name)
        if picture is None:
            notes.append(f"{rel}: annotations for a missing picture ({file_name})")
            continue
        key = picture.relative_to(root).as_posix()
        boxes = annotated.setdefault(key, [])
        for obj in node.iter("object"):
            label = (obj.findtext("name") or "").strip() or "unnamed"
            try:
                x0, y0, x1, y1 = (float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                refused.append({"name": rel, "reason": f"an object {label!r} without a numeric bndbox"})
                continue
            if x1 < x0 or y1 < y0:
                as_corners += 1
            classes.setdefault(label, None)
            boxes.append((label, [x0, y0, x1, y1]))
    for name, picture in pictures.items():
        annotated.setdefault(picture.relative_to(root).as_posix(), [])  # no .xml: background
    if as_corners:
        notes.append(f"{as_corners} VOC box(es) end before they start: they look like x, y, width, height; "
                     "VOC's bndbox is xmin, ymin, xmax, ymax")
    return list(classes), annotated, notes, refused


# ---------------------------------------------------------------- storing

def _store(root: Path, layout: str, classes: list[str], annotated: dict[str, list], notes: list[str],
           refused: list[dict], source: dict, name: str, workspace: Path | None) -> Path:
    """Check every picture, copy the usable ones (resizing huge ones, boxes alike) and write the record."""
    dataset_id, created = _new_id()
    datasets_dir = _datasets_dir(workspace)
    building = datasets_dir / f".{PREFIX}{dataset_id}.partial"
    images, used = [], set()
    with _published_or_removed(building):
        (building / "images").mkdir(parents=True)
        for rel, boxes in annotated.items():
            path = root / rel
            if not path.is_file():
                notes.append(f"{rel}: {len(boxes)} annotation(s) for a missing picture")
                continue
            try:
                picture = open_image(path, rel)
            except ImageRefused as refusal:
                refused.append({"name": rel, "reason": refusal.reason})
                continue
            stored, scale = _unique_name(Path(rel).name, used), 1.0
            if max(picture.size) > MAX_SIDE:
                scale = MAX_SIDE / max(picture.size)
                size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
                stored = str(Path(stored).with_suffix(".jpg"))
                picture.resize(size, Image.Resampling.LANCZOS).save(building / "images" / stored, quality=92)
                notes.append(f"{rel}: {picture.width}×{picture.height} px, stored at {size[0]}×{size[1]} "
                             "(boxes scaled alike)")
            else:
                size = picture.size
                shutil.copyfile(path, building / "images" / stored)
            images.append({"file": f"images/{stored}", "source": rel, "width": size[0], "height": size[1],
                           "scale": scale,
                           "boxes": [[round(v * scale, 2) for v in box] for _, box in boxes],
                           "labels": [label for label, _ in boxes]})
        if not images:
            raise DatasetError(f"{name}: no usable picture ({len(refused)} refused)")
        unknown = sorted({label for image in images for label in image["labels"]} - set(classes))
        if layout == "voc":
            classes = sorted(classes)
        atomic_write_json(building / RECORD, {"id": dataset_id, "name": name, "created": created, "layout": layout,
                                              "classes": classes, "unknown_classes": unknown, "images": images,
                                              "refused": refused, "notes": notes, "source": source})
    return datasets_dir / f"{PREFIX}{dataset_id}"


def _unique_name(name: str, used: set[str]) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "picture"
    candidate, n = safe, 2
    while candidate.lower() in used:
        candidate, n = f"{Path(safe).stem}_{n}{Path(safe).suffix}", n + 1
    used.add(candidate.lower())
    return candidate


def _datasets_dir(workspace: Path | None) -> Path:
    path = Path(workspace or workspace_root()) / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _boxsets(workspace: Path | None) -> list[BoxSet]:
    found = []
    for root in sorted(_datasets_dir(workspace).glob(f"{PREFIX}*")):
        try:
            found.append(load_boxset(root))
        except (DatasetError, ValueError, KeyError, TypeError):
            continue  # a damaged record must not hide the others
    return found
