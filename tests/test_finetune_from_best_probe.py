"""Issue 24: a fine-tune run starts from the probe feature extraction would keep (multi-layer features where
they validate better), keeps that head attached while layers learn, and never keeps less than that probe."""
import json

import pytest
import torch
from PIL import Image

from tl_core.__main__ import main as cli
from tl_core.models.multilayer import MultiLayerModel
from tl_core.ops.runs import read_metrics
from tl_core.use.explain import explain_image
from tl_core.use.export import export_run
from tl_core.use.predict import Predictor


@pytest.fixture(scope="module")
def tuned_run(sample_dir, tmp_path_factory):
    """top-2 fine-tune on 10 classes × 30 real Fashion-MNIST images, features chosen as the default chooses."""
    root = tmp_path_factory.mktemp("tuned_run")
    run_dir = root / "workspace" / "runs" / "top2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(root / "workspace"))
        assert cli(["train", "--data", str(sample_dir), "--freeze", "top-2", "--epochs", "2",
                    "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    return run_dir


def _facts(run_dir):
    return json.loads((run_dir / "facts.json").read_text())


def test_a_fine_tune_run_chooses_its_features_as_feature_extraction_does(tuned_run):
    choice = _facts(tuned_run)["features_choice"]  # absent when a fine-tune read the last layer only
    assert set(choice["scores"]) == {"last", "multi-layer"}
    assert _facts(tuned_run)["features"] == choice["features"]
    preprocess = json.loads((tuned_run / "preprocess.json").read_text())
    assert preprocess["features"] == choice["features"]


def test_the_kept_model_is_never_below_the_multi_layer_probe(tuned_run):
    """BestCheckpoint compares the fine-tune against the probe that read the chosen features."""
    choice = _facts(tuned_run)["features_choice"]
    metrics = read_metrics(tuned_run)
    assert metrics["val_acc"] >= choice["scores"][choice["features"]]["acc"] - 1e-9
    assert metrics["val_acc"] >= choice["scores"]["multi-layer"]["acc"] - 1e-9 or choice["features"] == "last"


def test_the_head_stays_attached_and_learns_with_the_layers(sample_dir, tmp_path, monkeypatch):
    """With multi-layer features forced, the fine-tune trains the top groups and the wide head together:
    the saved model is the multi-layer one and its fine-tuned weights differ from the pretrained body's."""
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    run_dir = tmp_path / "ws" / "runs" / "multi"
    assert cli(["train", "--data", str(sample_dir), "--freeze", "top-1", "--epochs", "2", "--features",
                "multi-layer", "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    predictor = Predictor(run_dir)
    assert isinstance(predictor.model, MultiLayerModel)
    head = predictor.model.get_classifier()
    assert head.in_features > predictor.model.last_features  # reads every stage, not the last layer only
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("event") == "epoch_end" and e.get("phase") == "finetune"]
    # The head that trained with the layers is the wide one: its gradient reached every stage's columns.
    assert read_metrics(run_dir)["features"] == "multi-layer"


def test_the_kept_model_predicts_explains_and_exports(tuned_run, sample_dir, tmp_path):
    predictor = Predictor(tuned_run)
    image = sorted(sample_dir.rglob("*.png"))[0]
    top = predictor.predict_files([image], top_k=1)[0]["top"][0]
    assert top["label"] in predictor.classes
    report = export_run(tuned_run, "onnx", out_dir=tmp_path / "onnx")
    assert report["verified"] and report["top1_agreement"] == 1.0
    explained = explain_image(predictor, Image.open(image))
    assert explained["class"] == top["label"] and explained["cam"].max() > 0


def test_a_fine_tune_must_also_beat_the_defaults_probe_on_the_held_out_images():
    """Beating the probe fitted on the training split is not enough: the default's head is fitted on every
    image, and scores higher out of fold on the same held-out images (Fit.set_probe_bar)."""
    import types

    from tl_core.fit.callbacks import BestCheckpoint

    fit = types.SimpleNamespace(model=torch.nn.Linear(3, 2), val_idx=list(range(100)), best=None, probe_bar=0.86,
                                emit=lambda *a, **k: None)
    best = BestCheckpoint()

    def epoch(n, phase, acc):
        best.on_epoch_end({"epoch": n, "phase": phase, "val_acc": acc, "val_loss": 1 - acc}, fit)
        return fit.best["epoch"]

    assert epoch(1, "probe", 0.78) == 1
    assert epoch(2, "finetune", 0.85) == 1  # +7 points over the split probe, but below the default's 86 %
    assert epoch(3, "finetune", 0.92) == 3  # clears 86 % by more than the noise
    fit.probe_bar = None
    best = BestCheckpoint()
    assert epoch(1, "probe", 0.78) == 1 and epoch(2, "finetune", 0.85) == 2  # without the bar, it would be kept


def test_the_run_records_the_bar_it_judged_fine_tuning_by(tuned_run):
    facts = _facts(tuned_run)
    assert 0 <= facts["probe_bar"] <= 1
    events = [json.loads(line) for line in (tuned_run / "events.jsonl").read_text().splitlines()]
    assert any(e.get("kind") == "probe_bar" and "fine-tuning must beat" in e["message"] for e in events)
