"""The audit of a dataset: counts, imbalance, duplicates, tiny images, validation overlap, in words;
and a subset without some classes or sub-folder images."""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

from ...ops.storage import atomic_write_json, workspace_root, write_bytes
from .ingest import _check_usable, _new_id, _plural, _published_or_removed, _verb
from .store import Dataset, _from_manifest


FEW_IMAGES_PER_CLASS = 10  # below this the audit suggests adding examples


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
