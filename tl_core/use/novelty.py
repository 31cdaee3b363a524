"""'Looks like none of these': how far a picture lies from every training picture, in the features the run's head
reads, and the threshold past which it is called unlike the training data.

The score is the cosine distance to the nearest training picture (1 - the highest cosine similarity of the pooled,
L2-normalised features): a classifier's softmax always names some class, even for a photo of a wall, while its
features are far from all it was trained on. The threshold is set on the training pictures themselves: each one's
distance to its nearest *other* training picture (leave-one-out), at the QUANTILE. So about 1 - QUANTILE of
pictures like the training ones are flagged by chance, which the page says. The training features and the
threshold are computed once, on first use, and kept in the run folder (RunFolder.novelty).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import decode_images, load_dataset
from ..ops import runs
from ..ops.storage import atomic_file, workspace_root
from .predict import Predictor

# 99 %, not 95 %: a warning that fires on one ordinary picture in twenty is soon ignored. Measured on Fashion-MNIST
# (4 classes, 32 training pictures, EfficientNet-Lite0 features at 96 px): 95 % flagged 7 of 40 held-out clothes,
# 99 % none, while photos of brick, grass, gravel and noise lay far beyond either (tests/test_novelty.py).
QUANTILE = 0.99
_BATCH = 64
# The training pictures compared with: all of them up to this many, else a seeded sample. Computed in the app's
# process on first use, so bounded (a minute or two on a CPU); beyond a few thousand the threshold barely moves.
MAX_REFERENCE = 2000


@dataclass
class Novelty:
    """The training pictures' normalised features and the distance past which a picture is unlike all of them."""

    features: np.ndarray  # N×D, float32, each row of length 1
    threshold: float
    quantile: float

    def scores(self, predictor: Predictor, pixels: torch.Tensor) -> np.ndarray:
        """Each picture's cosine distance to its nearest training picture (uint8 N×3×S×S, as Predictor.prepare)."""
        query = pooled_features(predictor, pixels)
        return 1.0 - (query @ self.features.T).max(axis=1) if len(query) else np.zeros(0, np.float32)

    def score_images(self, predictor: Predictor, images: list) -> np.ndarray:
        """scores() of PIL images, prepared as the model's own inputs."""
        if not images:
            return np.zeros(0, np.float32)
        return self.scores(predictor, torch.stack([predictor.prepare(image) for image in images]))

    def unlike(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are past the threshold: pictures that look like none of the classes."""
        return np.asarray(scores) > self.threshold

    def sentence(self) -> str:
        """The rule, in words, for the page."""
        return (f"A picture is called unlike the training pictures when its features are farther from every one of "
                f"{len(self.features)} training pictures than {self.quantile:.0%} of those are from their own "
                f"nearest neighbour (distance {self.threshold:.3f}); so about {1 - self.quantile:.0%} of ordinary "
                "pictures are flagged too. A picture close to the classes (a shirt, for a model of dresses and "
                "trousers) is often not flagged: this is a warning, not a verdict.")


def novelty_of(run_dir: str | Path, predictor: Predictor | None = None) -> Novelty:
    """The run's novelty model, read from its folder, or computed from its training data and saved there.

    A ValueError says why when it cannot be made (the training dataset was deleted, a multi-task model)."""
    run_dir = Path(run_dir)
    saved = _read(run_dir)
    if saved is not None:
        return saved
    predictor = predictor or Predictor(run_dir)
    try:
        dataset = load_dataset(runs.read_config(run_dir).dataset_dir)
    except (ValueError, OSError) as error:
        raise ValueError(f"the run's training pictures are no longer here ({error}), so there is nothing to "
                         "compare a picture with") from None
    if len(dataset.items) < 3:
        raise ValueError("too few training pictures to set a threshold on")
    paths = dataset.paths()
    if len(paths) > MAX_REFERENCE:  # a seeded sample: the same pictures each time, and a bounded first wait
        keep = np.random.default_rng(0).choice(len(paths), MAX_REFERENCE, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    preprocess = predictor.preprocess
    pixels = decode_images(paths, predictor.size, preprocess["crop_pct"], preprocess["interpolation"],
                           cache_dir=workspace_root() / "cache" / "pixels")
    features = pooled_features(predictor, pixels)
    novelty = Novelty(features, leave_one_out_threshold(features, QUANTILE), QUANTILE)
    _write(run_dir, novelty)
    return novelty


def leave_one_out_threshold(features: np.ndarray, quantile: float = QUANTILE) -> float:
    """The `quantile` of each row's cosine distance to its nearest other row."""
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.quantile(1.0 - similarity.max(axis=1), quantile))


@torch.inference_mode()
def pooled_features(predictor: Predictor, pixels: torch.Tensor) -> np.ndarray:
    """The features the run's head reads, L2-normalised: N×D float32."""
    model, out = predictor.model, []
    for start in range(0, len(pixels), _BATCH):
        batch = predictor.normalize(pixels[start:start + _BATCH])
        out.append(model.forward_head(model.forward_features(batch), pre_logits=True).float().cpu())
    features = torch.cat(out) if out else torch.zeros(0, 1)
    return torch.nn.functional.normalize(features, dim=1).numpy().astype(np.float32)


def _read(run_dir: Path) -> Novelty | None:
    path = runs.RunFolder(run_dir).novelty
    try:
        with np.load(path) as saved:
            return Novelty(saved["features"], float(saved["threshold"]), float(saved["quantile"]))
    except (OSError, ValueError, KeyError):  # none yet, or damaged: computed again
        return None


def _write(run_dir: Path, novelty: Novelty) -> None:
    with atomic_file(runs.RunFolder(run_dir).novelty) as f:
        np.savez(f, features=novelty.features, threshold=novelty.threshold, quantile=novelty.quantile)
