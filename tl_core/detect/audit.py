"""The audit of a box dataset: what is wrong or thin, listed, with nothing dropped from the dataset.

Boxes outside the picture, zero-area or inverted ones, unknown classes and near-identical duplicates are
listed by picture; pictures without boxes are counted (they train as background); class counts and a
histogram of box sizes at the model's input size, with a warning when objects are too small for it.
Training uses the same rules (tl_core.detect.batches): clipped to the picture, degenerate and unknown skipped.
"""
from __future__ import annotations

import math
from collections import Counter

from tl_core.detect.formats import BoxSet

DUPLICATE_IOU = 0.95  # two boxes of one class this alike are one object annotated twice
SMALLEST_PX = 8  # the finest pyramid level's stride: objects smaller than this at the input size are barely seen
SIZE_BINS = (0, 8, 16, 32, 64, 128, 256, 512, math.inf)  # sqrt(area) in input-size pixels
LISTED = 50  # items shown per list; counts are always whole


def audit(boxset: BoxSet, image_size: int = 160) -> dict:
    """Counts, problems by picture and warnings (in words) for `boxset`, boxes seen at `image_size` px."""
    counts, sizes = Counter(), []
    problems = {"outside": [], "degenerate": [], "unknown_class": [], "duplicate": []}
    totals = Counter()
    background = []
    known = set(boxset.classes)
    for image in boxset.images:
        if not image["boxes"]:
            background.append(image["file"])
        seen = []
        for box, label in zip(image["boxes"], image["labels"]):
            where = {"file": image["file"], "label": label, "box": box}
            x0, y0, x1, y1 = box
            if label not in known:
                totals["unknown_class"] += 1
                _add(problems["unknown_class"], where)
                continue
            counts[label] += 1
            if x1 <= x0 or y1 <= y0:
                totals["degenerate"] += 1
                _add(problems["degenerate"], where)
                continue
            if x0 < -1 or y0 < -1 or x1 > image["width"] + 1 or y1 > image["height"] + 1:
                totals["outside"] += 1
                _add(problems["outside"], where)
            if any(other_label == label and iou(box, other) >= DUPLICATE_IOU for other_label, other in seen):
                totals["duplicate"] += 1
                _add(problems["duplicate"], where)
            seen.append((label, box))
            scale = math.sqrt((image_size / image["width"]) * (image_size / image["height"]))
            sizes.append(math.sqrt((x1 - x0) * (y1 - y0)) * scale)
    histogram = _histogram(sizes)
    report = {"images": len(boxset.images), "boxes": sum(len(i["boxes"]) for i in boxset.images),
              "classes": boxset.classes, "class_counts": {c: counts.get(c, 0) for c in boxset.classes},
              "background_images": len(background), "background_listed": background[:LISTED],
              "problems": problems, "problem_counts": {k: totals.get(k, 0) for k in problems},
              "size_histogram": histogram, "image_size": image_size,
              "too_small": sum(1 for s in sizes if s < SMALLEST_PX),
              "refused": boxset.refused, "notes": boxset.notes}
    report["warnings"] = _warnings(report)
    return report


def iou(a, b) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _add(listing: list, item: dict) -> None:
    if len(listing) < LISTED:
        listing.append(item)


def _histogram(sizes: list[float]) -> list[dict]:
    bins = []
    for low, high in zip(SIZE_BINS, SIZE_BINS[1:]):
        label = f"{low}–{high} px" if math.isfinite(high) else f"{low}+ px"
        bins.append({"bin": label, "low": low, "count": sum(1 for s in sizes if low <= s < high)})
    return bins


def _warnings(report: dict) -> list[str]:
    warnings = []
    pc = report["problem_counts"]
    if pc["outside"]:
        warnings.append(f"{pc['outside']} box(es) reach outside their picture: they are clipped to it for training")
    if pc["degenerate"]:
        warnings.append(f"{pc['degenerate']} box(es) have no area (or end before they start): not used for training")
    if pc["unknown_class"]:
        warnings.append(f"{pc['unknown_class']} box(es) name a class the dataset does not declare: not used")
    if pc["duplicate"]:
        warnings.append(f"{pc['duplicate']} box(es) repeat another of the same class (IoU ≥ {DUPLICATE_IOU}): "
                        "one object annotated twice?")
    if report["too_small"]:
        warnings.append(f"{report['too_small']} object(s) are under {SMALLEST_PX} px at the {report['image_size']} px "
                        "input size: too small to find; raise the image size or crop the pictures")
    if report["background_images"]:
        warnings.append(f"{report['background_images']} picture(s) have no box: kept as background (they teach "
                        "the model where nothing is)")
    few = [c for c, n in report["class_counts"].items() if n < 10]
    if few:
        warnings.append(f"few examples (under 10 boxes) of: {', '.join(few[:5])}{' …' if len(few) > 5 else ''}")
    return warnings
