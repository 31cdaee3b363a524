"""Multi-layer features (every stage pooled) and the probe's choice between them and the last layer."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tl_core.models import backbones, layers
from tl_core.data.datasets import decode_images
from tl_core.use.export import export_run
from tl_core.models.multilayer import GRID, GRID_FROM, MultiLayerModel, build
from tl_core.use.predict import Predictor
from tl_core.fit.probe import choose_features


def _sample_pixels(sample_dir, size=96, n=4):
    paths = sorted(sample_dir.rglob("*.png"))[:n]
    return paths, decode_images(paths, size, 0.875, "bilinear")


def test_features_equal_the_stage_outputs_of_a_plain_forward(sample_dir):
    plain = backbones.create_model("tf_efficientnet_lite0", 3).eval()
    _, pixels = _sample_pixels(sample_dir)
    x = (pixels.float() / 255 - 0.5) / 0.5
    stages = []
    hooks = [plain.conv_stem.register_forward_hook(lambda m, i, o: stages.append(o))]  # stem, before bn1
    hooks += [block.register_forward_hook(lambda m, i, o: stages.append(o)) for block in plain.blocks]
    with torch.no_grad():
        pooled_last = plain.forward_head(plain.forward_features(x), pre_logits=True)
    for hook in hooks:
        hook.remove()
    stem = plain.bn1(stages[0]).detach()  # timm's first intermediate is the stem after its norm
    outputs = [stem, *stages[1:]]
    expected = torch.cat([t.mean((2, 3)) for t in outputs]
                         + [F.adaptive_avg_pool2d(t, GRID).flatten(1) for t in outputs[GRID_FROM:]]
                         + [pooled_last], 1)
    model = build(backbones.create_model("tf_efficientnet_lite0", 3), 3, "multi-layer").eval()
    with torch.no_grad():
        features = model.forward_features(x)
    assert features.shape == expected.shape == (4, model.num_features)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    assert model.num_features > 4 * model.last_features  # 5168 for Lite0, against 1280 for the last layer


def test_the_wrapper_keeps_parameter_names_and_layer_groups():
    plain = backbones.create_model("tf_efficientnet_lite0", 5, weights="none")
    names = {n for n in plain.state_dict()}
    model = build(backbones.create_model("tf_efficientnet_lite0", 5, weights="none"), 5, "multi-layer")
    assert set(model.state_dict()) == names  # classifier.weight/bias included, only wider
    assert model.get_classifier().weight.shape == (5, model.num_features)
    assert [g.name for g in layers.layer_groups(model)] == [g.name for g in layers.layer_groups(plain)]
    assert backbones.architecture(model) == "tf_efficientnet_lite0"


def _separable(informative_first: bool, n=120, classes=3, seed=0):
    """Features whose label signal lies only in the first 8 columns or only in the last 8 (the 'last layer')."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    signal = F.one_hot(labels, 8).float()[:, :8] * 3 + torch.randn(n, 8, generator=g)
    noise = torch.randn(n, 400, generator=g)
    last = noise[:, :8] if informative_first else signal
    early = torch.cat([signal if informative_first else noise[:, 8:16], noise[:, 16:]], 1)
    return torch.cat([early, last], 1), labels


@pytest.mark.parametrize("informative_first", [True, False])
def test_the_probe_keeps_the_features_that_validate_better(informative_first):
    feats, labels = _separable(informative_first)
    folds = [torch.arange(k, len(labels), 5) for k in range(5)]
    masks = torch.ones(5, len(labels), dtype=torch.bool)
    for f, fold in enumerate(folds):
        masks[f, fold] = False
    choice = choose_features(feats, 8, labels, masks, folds, 3, steps=6, label_smoothing=0.1)
    assert choice["features"] == ("multi-layer" if informative_first else "last")
    better = choice["scores"][choice["features"]]
    worse = choice["scores"]["last" if informative_first else "multi-layer"]
    assert better["loss"] < worse["loss"] and better["acc"] > worse["acc"]
    assert "validation" in choice["words"]


def test_a_multi_layer_run_predicts_and_exports_the_same(multi_layer_run, sample_dir, tmp_path):
    preprocess = json.loads((multi_layer_run / "preprocess.json").read_text())
    assert preprocess["features"] == "multi-layer"
    predictor = Predictor(multi_layer_run)
    assert isinstance(predictor.model, MultiLayerModel)
    report = export_run(multi_layer_run, "onnx", out_dir=tmp_path / "onnx")
    assert report["verified"] and report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4
    bundle = export_run(multi_layer_run, "safetensors", out_dir=tmp_path / "st")
    assert bundle["verified"]
    image = sorted(sample_dir.rglob("*.png"))[-1]
    expected = predictor.predict_files([image], top_k=1)[0]["top"][0]
    command = [sys.executable, str(tmp_path / "st" / "predict_example.py"), "--json", str(image)]
    alone = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path), env={"PATH": "/usr/bin"})
    assert alone.returncode != 0 and "multi-layer features" in alone.stderr  # says why, and what to use instead
    repo = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=str(tmp_path),
                         env={"PATH": "/usr/bin", "PYTHONPATH": repo})
    probs = json.loads(out.stdout.splitlines()[0])["probs"]
    assert predictor.classes[max(range(len(probs)), key=probs.__getitem__)] == expected["label"]
    assert max(probs) == pytest.approx(expected["prob"], abs=1e-4)


def test_auto_features_record_the_comparison(small_sample, tmp_path, monkeypatch):
    from tl_core.__main__ import main as cli

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    run_dir = tmp_path / "ws" / "runs" / "auto"
    assert cli(["train", "--data", str(small_sample), "--epochs", "2", "--image-size", "96",
                "--run-dir", str(run_dir)]) == 0
    facts = json.loads((run_dir / "facts.json").read_text())
    choice = facts["features_choice"]
    assert set(choice["scores"]) == {"last", "multi-layer"} and facts["features"] == choice["features"]
    preprocess = json.loads((run_dir / "preprocess.json").read_text())
    assert preprocess["features"] == choice["features"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e.get("kind") == "features" for e in events)
    assert Predictor(run_dir).predict_files([next(small_sample.rglob("*.png"))])[0]["top"]
