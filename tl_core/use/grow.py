"""Grow a finished model: add images to its classes, or new classes, without training the backbone again.

The grown run is a new run (its parent_run names the old one) on a new dataset version: the parent's
images and the new ones (the parent's dataset stays as it was). It trains only the head, on frozen
features, with the parent's backbone, weights, image size and features; the features of the parent's
images are taken from the parent's feature cache (by image content), so only the new images pass
through the backbone. When it ends, the old classes' recall in both runs is compared: a grown model
must not have forgotten what it knew (facts.json "old_classes", and `python -m tl_core grow` prints it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models import backbones, multilayer
from ..fit import batches
from ..config import RunConfig
from ..data.datasets import decode_images, ingest_files, ingest_folder, load_dataset
from ..ops.runs import RunFolder, create_run, read_config, read_metrics, record_facts
from ..ops.storage import atomic_file, read_json, workspace_root


def grow(parent_dir: str | Path, new_images: str | Path, name: str | None = None) -> Path:
    """Ingest the folder `new_images` and prepare the grown run; return its folder, queued and untrained."""
    return create_run(grown_config(parent_dir, ingest_folder(new_images, min_classes=1), name))


def grown_config(parent_dir: str | Path, added, name: str | None = None, workspace: Path | None = None) -> RunConfig:
    """The grown run's config, on a new dataset version (the parent's images and the `added` dataset's, kept
    under `workspace`: a classroom user's own), with its feature cache already written: call it before the
    run is queued, so the worker finds the cache."""
    parent_dir = Path(parent_dir)
    parent = read_config(parent_dir)
    preprocess = read_json(RunFolder(parent_dir).preprocess)
    old = load_dataset(parent.dataset_dir)
    files = [(Path(item["path"]).name, (old.root / item["path"]).read_bytes(), item["label"]) for item in old.items]
    files += [(Path(item["path"]).name, (added.root / item["path"]).read_bytes(), item["label"]) for item in added.items]
    merged = ingest_files(files, name=f"{old.name} + {added.name}", workspace=workspace)
    features = preprocess.get("features", "last")
    _warm_feature_cache(parent, preprocess, old, merged, features)
    return parent.replace(dataset_dir=str(merged.root), parent_run=parent_dir.name, freeze="head",
                          features=features, augment="none", lr=None, val_dataset_dir=None,
                          name=name or f"{parent.name or parent_dir.name} grown",
                          grown=True)


def after_fit(config: RunConfig, run_dir: Path) -> None:
    """The check of a finished run (tl_core.kinds' after_fit hook): a grown model, has it kept what it knew?"""
    if config.grown and config.parent_run:
        old_class_recall(Path(run_dir).parent / config.parent_run, run_dir)


def old_class_recall(parent_dir: Path, child_dir: Path) -> dict:
    """Recall of each of the parent's classes, in the parent's and the grown run's validation."""
    before, after = read_metrics(parent_dir).get("per_class", {}), read_metrics(child_dir).get("per_class", {})
    rows = {c: {"before": before[c]["recall"], "after": after[c]["recall"]} for c in before if c in after}
    mean = lambda key: sum(r[key] for r in rows.values()) / max(len(rows), 1)  # noqa: E731
    summary = {"classes": rows, "before": mean("before"), "after": mean("after")}
    record_facts(child_dir, old_classes=summary)
    return summary


@torch.no_grad()
def _warm_feature_cache(parent: RunConfig, preprocess: dict, old, merged, features: str) -> None:
    """Write the grown run's feature cache: the parent's rows for images it had, the backbone's for new ones."""
    def key(paths, kind=features):
        return batches.feature_key(parent.backbone, parent.weights, {**_data_config(preprocess), "features": kind},
                                   paths)
    caches = workspace_root() / "cache" / "features"
    width = backbones.create_model(parent.backbone, 2, weights="none").num_features  # the last layer's
    rows = _parent_rows(caches, key(old.paths()), key, old, features, width)
    known = {item["sha256"]: rows[i] for i, item in enumerate(old.items)} if rows is not None else {}
    missing = [i for i, item in enumerate(merged.items) if item["sha256"] not in known]
    computed = {}
    if missing:
        body = backbones.create_model(parent.backbone, len(merged.classes), weights=parent.weights)
        model = multilayer.build(body, len(merged.classes), features).eval()
        size = preprocess["input_size"][-1]
        pixels = decode_images([merged.paths()[i] for i in missing], size, preprocess["crop_pct"],
                               preprocess["interpolation"])
        to_device = batches.normalizer(preprocess, torch.device("cpu"), False)
        source = batches.PixelSource(model, pixels, torch.zeros(len(missing), dtype=torch.long), to_device)
        for start in range(0, len(missing), 32):
            chunk = source.features(to_device(pixels[start:start + 32])).float().numpy()
            computed.update({missing[start + j]: row for j, row in enumerate(chunk)})
    table = np.stack([known[item["sha256"]] if i not in computed else computed[i]
                      for i, item in enumerate(merged.items)])
    target = caches / f"{key(merged.paths())}.npy"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as f:
        np.save(f, table.astype(np.float32))


def _parent_rows(caches: Path, parent_key: str, key, old, features: str, last_width: int) -> np.ndarray | None:
    """The parent's cached features, one row per parent image; None when not cached. A parent that kept
    last-layer features after comparing them with multi-layer ones cached the multi-layer ones: their last
    columns are the last layer's."""
    cache = caches / f"{parent_key}.npy"
    if cache.exists():
        rows = np.load(cache)
        return rows if len(rows) == len(old.items) else None
    wider = caches / f"{key(old.paths(), 'multi-layer')}.npy"
    if features == "last" and wider.exists():
        rows = np.load(wider)
        return rows[:, -last_width:] if len(rows) == len(old.items) else None
    return None


def _data_config(preprocess: dict) -> dict:
    """The preprocessing part of a run's preprocess.json, as Fit.prepare builds it (the key's input)."""
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    config = {k: preprocess[k] for k in keys}
    config["input_size"] = tuple(config["input_size"])
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    return config
