"""Which backbone for my data? Each candidate's frozen features, scored by a cross-validated probe.

The score is what feature extraction would reach on these images: the 5-fold cross-validated
accuracy of the logistic probe on each candidate's multi-layer features (last-layer where a model has
no stages to pool), the same probe and features a run uses. The features go to the same cache as a
run's, so training the winner afterwards starts from them. Candidates are the backbones whose weights
are here (embedded or in the hub cache; the command line takes any name:weights); with a single one, the ranking compares
image sizes of it instead, and says why.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..models import backbones, multilayer
from ..fit import batches
from ..data.datasets import decode_images, load_dataset, stratified_folds, stratified_split
from ..fit.probe import best_on_path, one_thread
from ..ops.storage import workspace_root

MAX_IMAGES = 300  # a stratified sample of the data set: the ranking is a quick look, not a run
SIZES = (160, 224, 288)  # the image sizes compared when only one backbone is available
STEPS = 8


def available_backbones() -> list[tuple[str, str]]:
    """(backbone, weights) pairs of the catalogue usable without a network: embedded, or in the hub cache."""
    return [(info.name, backbones.default_weights(info.name)) for info in backbones.CATALOGUE
            if backbones.weights_available_offline(info.name)]


def rank(dataset_dir: str | Path, candidates: list[tuple[str, str]] | None = None, sizes: tuple = SIZES,
         image_size: int | None = None, seed: int = 0, on_progress=None) -> dict:
    """{"rows": [{"backbone", "weights", "image_size", "acc", "seconds"}], best first, "compares", "words"}.
    Backbones are compared at `image_size` (default: each one's own); a single one at each of `sizes`."""
    dataset = load_dataset(str(dataset_dir))
    paths, labels = dataset.paths(), dataset.labels()
    if len(paths) > MAX_IMAGES:
        keep, _ = stratified_split(labels, 1 - MAX_IMAGES / len(paths), seed)
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    candidates = candidates if candidates is not None else available_backbones()
    if len(candidates) == 1:
        name, weights = candidates[0]
        trials, compares = [(name, weights, size) for size in sizes], "image sizes"
    else:
        trials, compares = [(name, weights, image_size) for name, weights in candidates], "backbones"
    y = torch.tensor(labels)
    k = min(5, max(2, int(y.bincount().min())))
    folds = stratified_folds(labels, k, seed)
    masks = torch.ones(k, len(labels), dtype=torch.bool)
    for f, fold in enumerate(folds):
        masks[f, fold] = False
    rows = []
    for i, (name, weights, size) in enumerate(trials):
        if on_progress:
            on_progress(i, len(trials), f"{name} ({weights})" + (f" at {size} px" if size else ""))
        start = time.time()
        feats, image_size = _features(name, weights, size, paths, len(dataset.classes))
        with one_thread():
            best = best_on_path(feats, y, masks, [torch.tensor(f, dtype=torch.long) for f in folds],
                                len(dataset.classes), STEPS, 0.1)
        rows.append({"backbone": name, "weights": weights, "image_size": image_size, "acc": best["acc"],
                     "loss": best["loss"], "seconds": time.time() - start})
    rows.sort(key=lambda r: (-r["acc"], r["loss"]))
    why = ("only one backbone has its weights here (offline), so its image sizes are compared instead"
           if compares == "image sizes" else f"{len(rows)} backbones with weights here")
    top = rows[0]
    words = (f"{top['backbone']} at {top['image_size']} px ranks first: {top['acc']:.1%} by {k}-fold cross-validation "
             f"of the probe on {len(labels)} of your images ({why})")
    return {"rows": rows, "compares": compares, "images": len(labels), "folds": k, "words": words}


@torch.no_grad()
def _features(name: str, weights: str, size: int | None, paths: list, num_classes: int) -> tuple[torch.Tensor, int]:
    body = backbones.create_model(name, num_classes, weights=weights)
    kind = "multi-layer" if multilayer.supports(body) else "last"
    model = multilayer.build(body, num_classes, kind).eval()
    preprocess = backbones.data_config(model, size)
    image_size = preprocess["input_size"][-1]
    pixels = decode_images(paths, image_size, preprocess["crop_pct"], preprocess["interpolation"],
                           cache_dir=workspace_root() / "cache" / "pixels")
    source = batches.PixelSource(model, pixels, torch.zeros(len(paths), dtype=torch.long),
                                 batches.normalizer(preprocess, torch.device("cpu"), False))
    key = batches.feature_key(name, weights, {**preprocess, "features": kind}, paths)
    cache = workspace_root() / "cache" / "features" / f"{key}.npy"
    cache.parent.mkdir(parents=True, exist_ok=True)
    features = batches.feature_source(source, cache, 32, on_batch=lambda *a: None, on_reuse=lambda m: None)
    return features.features_all.float(), image_size
