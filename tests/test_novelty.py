"""'Looks like none of these' (tl_core.use.novelty): pictures far from the training set are flagged, held-out
pictures of the same kind mostly are not, and the threshold is set on the training pictures and kept."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_core.anomaly.synthetic import good_image
from tl_core.data.datasets import open_image
from tl_core.ops import runs
from tl_core.use import novelty
from tl_core.use.predict import Predictor

KNOWN = ("Trouser", "Bag", "Sneaker", "Dress")  # head_run's classes


@pytest.fixture
def own_run(head_run, _workspace) -> Path:
    return Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))


def far_pictures(n: int = 12) -> list:
    """Photographs of brick, grass and gravel, and colour noise: nothing like clothing on black."""
    rng = np.random.default_rng(0)
    textures = [good_image(source, rng, size=128) for source in ("brick", "grass", "gravel") for _ in range(n // 6)]
    noise = [open_image(_png(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))) for _ in range(n - len(textures))]
    return textures + noise


def _png(array) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_far_pictures_are_flagged_and_held_out_clothes_mostly_not(own_run, fashion_test_dir):
    predictor = Predictor(own_run)
    model = novelty.novelty_of(own_run, predictor)
    assert model.features.shape[0] == 32 and model.quantile == novelty.QUANTILE
    held_out = [open_image(path) for name in KNOWN for path in sorted((fashion_test_dir / name).glob("*.png"))]
    near = model.unlike(model.scores(predictor, torch.stack([predictor.prepare(im) for im in held_out])))
    far = model.unlike(model.scores(predictor, torch.stack([predictor.prepare(im) for im in far_pictures()])))
    print(f"held-out flagged {near.mean():.0%}, far flagged {far.mean():.0%}, threshold {model.threshold:.3f}")
    assert far.all()
    assert near.mean() <= 0.1
    assert "99%" in model.sentence() and "32 training pictures" in model.sentence()


def test_the_threshold_is_kept_in_the_run_folder_and_read_back(own_run):
    first = novelty.novelty_of(own_run)
    assert runs.RunFolder(own_run).novelty.is_file()
    again = novelty.novelty_of(own_run)
    assert again.threshold == first.threshold and np.array_equal(again.features, first.features)


def test_the_leave_one_out_threshold_is_the_quantile_of_nearest_other_distances():
    features = np.eye(4, dtype=np.float32)  # four orthogonal pictures: each is at distance 1 from every other
    assert novelty.leave_one_out_threshold(features, 0.95) == pytest.approx(1.0)
    close = np.array([[1, 0], [0.96, 0.28], [0, 1]], dtype=np.float32)  # two close, one apart
    distances = sorted([1 - 0.96, 1 - 0.96, 1 - 0.28])
    assert novelty.leave_one_out_threshold(close, 0.5) == pytest.approx(distances[1])


def test_a_big_training_set_is_compared_through_a_seeded_sample(own_run, monkeypatch):
    monkeypatch.setattr(novelty, "MAX_REFERENCE", 10)
    first = novelty.novelty_of(own_run)
    runs.RunFolder(own_run).novelty.unlink()
    again = novelty.novelty_of(own_run)
    assert first.features.shape[0] == 10 and np.array_equal(first.features, again.features)
    assert "10 training pictures" in first.sentence()
