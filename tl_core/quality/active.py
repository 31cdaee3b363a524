"""What to label next: the unlabelled images whose labels would teach a trained run the most.

Two things make a label worth asking for: the model is unsure of the image (a small margin between its
two likeliest classes, or a high entropy), and the image is unlike those already labelled or already
picked (a label there covers new ground; ten near-copies of one uncertain image teach what one does).
The pick is greedy, uncertainty-weighted k-center on the run's own features (what its head reads):
each step takes the pool image with the largest uncertainty × distance to the nearest labelled or
picked image. The labels the user gives join the dataset as a new version (add_labelled).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.datasets import Dataset, decode_images, load_dataset, new_version
from ..data.datasets.unlabelled import ingest_unlabelled_or_reuse_folder
from ..use.predict import Predictor
from ..fit.probe import PROBE_STD_FLOOR
from ..ops.runs import read_config, read_metrics
from ..ops.storage import workspace_root

UNCERTAINTY = ("margin", "entropy")
CHOICES = ("diverse", "uncertain")  # diverse: uncertainty-weighted k-center; uncertain: the k least sure


def suggest(run_dir: str | Path, pool: Dataset | str | Path, k: int = 20, by: str = "margin",
            choice: str = "diverse", batch_size: int = 64) -> dict:
    """The `k` pool images to label next, the most useful first, with the model's guess.

    `pool`: an unlabelled dataset (tl_core.data.datasets.unlabelled), its folder, or a folder of images to ingest.
    Pool images already in the run's dataset (same bytes) are left out. Returns {"suggestions": [{"path",
    "guess", "prob", "uncertainty", "rank"}, ...], "candidates", "already_labelled", "words"}.
    """
    if by not in UNCERTAINTY or choice not in CHOICES:
        raise ValueError(f"suggest: by is one of {', '.join(UNCERTAINTY)} and choice one of {', '.join(CHOICES)}")
    if k < 1:
        raise ValueError(f"suggest: k = {k}; ask for at least one image")
    if (read_metrics(run_dir) or {}).get("tasks"):
        raise ValueError(f"{Path(run_dir).name}: a multi-task run; suggestions are made for single-task runs only")
    pool = _pool(pool)
    predictor = Predictor(run_dir)
    labelled = _labelled(run_dir)
    known = {item["sha256"] for item in labelled.items} if labelled else set()
    candidates, seen = [], set()
    for path, item in zip(pool.paths(), pool.items):
        if item["sha256"] not in known and item["sha256"] not in seen:  # a copy adds nothing a label could teach
            seen.add(item["sha256"])
            candidates.append(path)
    skipped = sum(item["sha256"] in known for item in pool.items)
    if not candidates:
        return {"suggestions": [], "candidates": 0, "already_labelled": skipped,
                "words": "every pool image is already in the run's dataset: nothing left to label"}
    pool_features, probs = _features_and_probs(predictor, candidates, batch_size)
    uncertainty = _uncertainty(probs, by)
    if choice == "uncertain":
        picks = uncertainty.argsort(descending=True)[:k].tolist()
    else:
        labelled_features = _features_and_probs(predictor, labelled.paths(), batch_size)[0] if labelled else None
        picks = weighted_k_center(pool_features, uncertainty, k, labelled_features)
    confidence, guess = probs.max(1)
    suggestions = [{"path": str(candidates[i]), "guess": predictor.classes[guess[i]], "prob": round(float(confidence[i]), 6),
                    "uncertainty": round(float(uncertainty[i]), 6), "rank": rank + 1} for rank, i in enumerate(picks)]
    what = ("the margin between its two likeliest classes" if by == "margin" else "the entropy of its prediction")
    words = (f"{len(suggestions)} of {len(candidates)} pool images, ranked by how unsure the model is ({what})"
             + (" times how far each is from the images already labelled or picked" if choice == "diverse" else ""))
    return {"suggestions": suggestions, "candidates": len(candidates), "already_labelled": skipped, "words": words}


def add_labelled(dataset: Dataset | str | Path, labelled: list[tuple], name: str | None = None) -> Dataset:
    """A new version of `dataset` with the pool images given as (image file, label) added; `dataset` stays."""
    dataset = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    return new_version(dataset, add=labelled, name=name)


def weighted_k_center(features: torch.Tensor, uncertainty: torch.Tensor, k: int,
                      covered: torch.Tensor | None = None) -> list[int]:
    """Greedy picks of rows of `features`: each maximises uncertainty × distance to the nearest row picked or
    `covered` (the labelled images). Distances are on features standardised by the covered rows (else by all)."""
    reference = covered if covered is not None and len(covered) > 1 else features
    mean, std = reference.mean(0), reference.std(0)
    std = std.clamp_min(PROBE_STD_FLOOR * std.median() + 1e-6)
    x = (features - mean) / std
    nearest = torch.full((len(x),), math.inf)
    if covered is not None and len(covered):
        nearest = torch.cdist(x, (covered - mean) / std).min(1).values
    picks: list[int] = []
    for _ in range(min(k, len(x))):
        score = uncertainty * nearest if torch.isfinite(nearest).any() else uncertainty.clone()
        if picks:
            score[picks] = -1
        pick = int(score.argmax())
        picks.append(pick)
        nearest = torch.minimum(nearest, torch.cdist(x, x[pick:pick + 1]).squeeze(1))
    return picks


def _uncertainty(probs: torch.Tensor, by: str) -> torch.Tensor:
    """In [0, 1], 1 the least sure: 1 - (p1 - p2), or the entropy over its most, log K."""
    if by == "entropy":
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        return entropy / math.log(max(probs.shape[1], 2))
    top = probs.topk(min(2, probs.shape[1]), dim=1).values
    return 1 - (top[:, 0] - top[:, 1]) if top.shape[1] > 1 else torch.zeros(len(probs))


@torch.inference_mode()
def _features_and_probs(predictor: Predictor, paths: list, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the run's head reads, and its probabilities, for image files (decoded once, cached)."""
    preprocess = predictor.preprocess
    pixels = decode_images(paths, predictor.size, preprocess["crop_pct"], preprocess["interpolation"],
                           cache_dir=workspace_root() / "cache" / "pixels")
    model, features, probs = predictor.model, [], []
    for start in range(0, len(pixels), batch_size):
        pooled = model.forward_head(model.forward_features(predictor.normalize(pixels[start:start + batch_size])),
                                    pre_logits=True).float()
        features.append(pooled.cpu())
        probs.append(model.get_classifier()(pooled).softmax(1).cpu())
    return torch.cat(features), torch.cat(probs)


def _pool(pool: Dataset | str | Path) -> Dataset:
    if isinstance(pool, Dataset):
        return pool
    if (Path(pool) / "manifest.json").is_file():
        return load_dataset(pool)
    return ingest_unlabelled_or_reuse_folder(pool)


def _labelled(run_dir: str | Path) -> Dataset | None:
    """The run's training dataset; None when it has been deleted since (the pool is then judged alone)."""
    try:
        return load_dataset(read_config(run_dir).dataset_dir)
    except (ValueError, OSError):
        return None
