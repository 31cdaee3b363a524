"""Small, real-looking detection sets: Fashion-MNIST items of the bundled sample pasted on varied backgrounds,
with their tight boxes, written as COCO, YOLO or Pascal VOC. For tests, the bench and a first try in the app."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tl_core.data.sample_data import SAMPLE_DIR

SAMPLE_CLASSES = ("Trouser", "Bag", "Sneaker")
FORMATS = ("coco", "yolo", "voc")


def make_scenes(n_images: int, seed: int = 0, size: int = 160, classes=SAMPLE_CLASSES,
                objects: tuple[int, int] = (1, 3), object_px: tuple[int, int] = (28, 64), empty_share: float = 0.05,
                first_item: int = 0, items: int = 20) -> list[tuple[Image.Image, list[tuple[str, list[float]]]]]:
    """`n_images` scenes: (picture, [(class, [x0, y0, x1, y1]), ...]); items `first_item`..+`items` of each class
    of the sample, so two calls with disjoint item ranges share no object picture."""
    rng = np.random.default_rng(seed)
    pool = {name: sorted((SAMPLE_DIR / name).glob("*.png"))[first_item:first_item + items] for name in classes}
    scenes = []
    for _ in range(n_images):
        canvas = _background(rng, size)
        boxes: list[tuple[str, list[float]]] = []
        count = 0 if rng.random() < empty_share else int(rng.integers(objects[0], objects[1] + 1))
        for _ in range(count):
            name = classes[int(rng.integers(len(classes)))]
            item = Image.open(pool[name][int(rng.integers(len(pool[name])))]).convert("L")
            placed = _paste(canvas, item, rng, object_px, [b for _, b in boxes])
            if placed:
                boxes.append((name, placed))
        scenes.append((canvas, boxes))
    return scenes


def write_set(dest: str | Path, n_images: int, fmt: str = "coco", seed: int = 0, **scene_options) -> Path:
    """Write a detection set of `n_images` scenes in `fmt` (coco | yolo | voc) into `dest`; returns `dest`."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt: {fmt!r} is not one of {', '.join(FORMATS)}")
    dest = Path(dest)
    classes = list(scene_options.get("classes", SAMPLE_CLASSES))
    scenes = make_scenes(n_images, seed, **scene_options)
    {"coco": _write_coco, "yolo": _write_yolo, "voc": _write_voc}[fmt](dest, scenes, classes)
    return dest


def _background(rng, size: int) -> Image.Image:
    """A two-colour gradient with noise and a few soft shapes: no two pictures alike, clutter that is not an object."""
    top, bottom = rng.integers(0, 200, 3), rng.integers(0, 200, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(-20, size, 2)
        w, h = rng.integers(10, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(1.0))


def _paste(canvas: Image.Image, item: Image.Image, rng, object_px: tuple[int, int],
           taken: list[list[float]]) -> list[float] | None:
    """Paste a tinted item where it overlaps no earlier one much; its tight box, or None when no place was found."""
    side = int(rng.integers(object_px[0], object_px[1] + 1))
    mask = item.resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(mask)
    ys, xs = np.nonzero(alpha > 40)
    if len(xs) == 0:
        return None
    colour = np.array([int(c) for c in rng.integers(120, 256, 3)], np.float32)
    tint = Image.fromarray((alpha[..., None] / 255.0 * colour).clip(0, 255).astype(np.uint8))
    for _ in range(20):
        x, y = (int(v) for v in rng.integers(0, canvas.width - side + 1, 2))
        box = [float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1)]
        if all(_iou(box, other) < 0.1 for other in taken):
            canvas.paste(tint, (x, y), Image.fromarray(np.clip(alpha.astype(np.int32) * 2, 0, 255).astype(np.uint8)))
            return box
    return None


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _write_coco(dest: Path, scenes, classes: list[str]) -> None:
    (dest / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (picture, boxes) in enumerate(scenes):
        name = f"scene_{i:04d}.jpg"
        picture.save(dest / "images" / name, quality=92)
        images.append({"id": i + 1, "file_name": name, "width": picture.width, "height": picture.height})
        for label, (x0, y0, x1, y1) in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": classes.index(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    (dest / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}, indent=1))


def _write_yolo(dest: Path, scenes, classes: list[str]) -> None:
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "labels").mkdir(parents=True, exist_ok=True)
    for i, (picture, boxes) in enumerate(scenes):
        name = f"scene_{i:04d}"
        picture.save(dest / "images" / f"{name}.jpg", quality=92)
        w, h = picture.size
        lines = [f"{classes.index(label)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                 f"{(y1 - y0) / h:.6f}" for label, (x0, y0, x1, y1) in boxes]
        (dest / "labels" / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {k}: {name}" for k, name in enumerate(classes))
    (dest / "data.yaml").write_text(f"path: .\ntrain: images\nval: images\nnames:\n{names}\n")


def _write_voc(dest: Path, scenes, classes: list[str]) -> None:
    (dest / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (dest / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, (picture, boxes) in enumerate(scenes):
        name = f"scene_{i:04d}"
        picture.save(dest / "JPEGImages" / f"{name}.jpg", quality=92)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{name}.jpg"
        size = ET.SubElement(root, "size")
        for key, value in (("width", picture.width), ("height", picture.height), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for label, (x0, y0, x1, y1) in boxes:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = label
            box = ET.SubElement(obj, "bndbox")
            for key, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(box, key).text = str(int(round(value)))
        ET.ElementTree(root).write(dest / "Annotations" / f"{name}.xml")
