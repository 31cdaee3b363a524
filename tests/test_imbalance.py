"""Class imbalance acted on: the decision (off when balanced, on from a 3× ratio, switchable), the weighted probe
and fine-tune loss, and what a real run on imbalanced sample images records and says."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tl_core.config import ConfigError, RunConfig
from tl_core.fit.metrics import classification_metrics
from tl_core.fit.imbalance import AUTO_FROM_RATIO, class_weighting
from tl_core.fit.probe import HeadFits
from tl_core.ops.runs import read_config_record, read_events, read_metrics
from tl_core.fit.tasks import Batch, Classification


def test_weighting_is_off_when_classes_are_balanced_and_on_from_the_ratio():
    balanced = class_weighting("auto", [8, 8, 7])
    assert (balanced["on"], balanced["weights"], balanced["notice"]) == (False, None, False)
    assert AUTO_FROM_RATIO == 3
    below = class_weighting("auto", [29, 10, 12])
    assert not below["on"] and below["notice"] and "weighting starts at 3×" in below["words"]
    at = class_weighting("auto", [30, 10, 12])
    assert at["on"] and at["words"] == "classes weighted by 1/count: the largest class has 3× the smallest's images"
    ten = class_weighting("auto", [100, 10])
    assert ten["words"] == "classes weighted by 1/count: the largest class has 10× the smallest's images"
    assert ten["weights"][1] == pytest.approx(10 * ten["weights"][0])
    assert sum(w * n for w, n in zip(ten["weights"], [100, 10])) == pytest.approx(110)  # mean weight 1 an image


def test_the_setting_switches_it_either_way():
    assert class_weighting("on", [8, 8])["on"] and class_weighting("on", [8, 8])["weights"] == [1.0, 1.0]
    forced_off = class_weighting("off", [100, 10])
    assert not forced_off["on"] and forced_off["notice"] and "lean toward the bigger classes" in forced_off["words"]
    with pytest.raises(ConfigError, match="class_weights: 'maybe' is not one of auto, on, off"):
        RunConfig(dataset_dir="d", class_weights="maybe")
    from tl_core.__main__ import _add_settings
    import argparse

    parser = argparse.ArgumentParser()
    _add_settings(parser)
    assert parser.parse_args(["--class-weights", "off"]).class_weights == "off"


def test_balanced_accuracy_is_the_mean_recall():
    metrics = classification_metrics([0] * 90 + [1] * 10, [0] * 90 + [0] * 10, ["big", "small"])
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert [metrics["per_class"][c]["recall"] for c in ("big", "small")] == [1.0, 0.0]


def _overlapping(n_big: int, n_small: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    feats = torch.cat([torch.randn(n_big, 8, generator=generator),
                       torch.randn(n_small, 8, generator=generator) + 0.8])
    return feats, torch.tensor([0] * n_big + [1] * n_small)


def test_weighted_probe_finds_more_of_the_small_class():
    feats, labels = _overlapping(200, 20)
    masks = torch.ones(1, len(labels), dtype=torch.bool)
    recall = {}
    for name, weights in (("plain", None), ("weighted", torch.tensor(class_weighting("auto", [200, 20])["weights"]))):
        fits = HeadFits(feats, labels, masks, 2, class_weights=weights)
        for _ in range(3):
            fits.step(1e-3, 0.0)
        predicted = fits.logits()[0].argmax(1)
        recall[name] = (predicted[labels == 1] == 1).float().mean().item()
    assert recall["weighted"] > recall["plain"] + 0.2
    plain = HeadFits(feats, labels, masks, 2)
    ones = HeadFits(feats, labels, masks, 2, class_weights=torch.ones(2))
    assert torch.allclose(plain.sample_weights, ones.sample_weights)


def test_the_fine_tune_task_weights_its_loss():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 2])
    weight = torch.tensor([0.5, 2.0, 2.0])
    head = torch.nn.Identity()
    out = Classification(0.1, weight=weight).step(Batch(torch.arange(6), logits, labels), logits, head)
    assert out["loss"].item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=weight, label_smoothing=0.1).item())
    assert Classification(0.1).step(Batch(torch.arange(6), logits, labels), logits, head)["loss"].item() \
        != pytest.approx(out["loss"].item())


@pytest.fixture
def imbalanced(small_sample, tmp_path) -> Path:
    """Two classes of 8 sample images and one of 2: with a quarter held out, 6 training images against 1."""
    data = Path(shutil.copytree(small_sample, tmp_path / "imbalanced", ignore=shutil.ignore_patterns("Dress")))
    for extra in sorted((data / "Sneaker").iterdir())[2:]:
        extra.unlink()
    return data


def test_a_run_on_imbalanced_images_weights_both_phases_and_says_so(imbalanced, tmp_path):
    from tl_core import worker
    from tl_core.data.datasets import ingest_folder
    from tl_core.ops.runs import create_run

    dataset = ingest_folder(imbalanced)
    config = RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet", weights="none", freeze="top-1",
                       epochs=1, image_size=64, val_fraction=0.25)
    task = Classification(config.label_smoothing)
    run_dir = create_run(config, run_dir=tmp_path / "run")
    metrics = worker.run(run_dir, task=task)
    notices = [e["message"] for e in read_events(run_dir) if e["event"] == "notice" and e.get("kind") == "class_weights"]
    assert notices == ["classes weighted by 1/count: the largest class has 6× the smallest's images"]
    facts = read_config_record(run_dir)["class_weights"]
    assert facts["on"] and facts["ratio"] == pytest.approx(6.0)
    assert metrics["classes"] == ["Bag", "Sneaker", "Trouser"]
    assert task.class_weight is not None
    weight = task.class_weight.cpu().tolist()  # on the run's device (cuda where there is one)
    assert weight[1] == pytest.approx(6 * weight[0])
    saved = read_metrics(run_dir)
    assert saved["class_weights"] == facts
    recalls = [scores["recall"] for scores in saved["per_class"].values() if scores["support"]]
    assert saved["val_balanced_acc"] == pytest.approx(sum(recalls) / len(recalls))
    assert metrics["val_balanced_acc"] == saved["val_balanced_acc"]
    off = create_run(config.replace(class_weights="off"), run_dir=tmp_path / "off")
    worker.run(off)
    assert not read_config_record(off)["class_weights"]["on"]
    assert "lean toward the bigger classes" in json.dumps(read_events(off))


def test_a_balanced_run_is_not_weighted_and_says_nothing(head_run):
    assert read_config_record(head_run)["class_weights"]["on"] is False
    assert not any(e.get("kind") == "class_weights" for e in read_events(head_run))
