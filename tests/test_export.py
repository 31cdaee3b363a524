"""Export bundles (ONNX, TorchScript, safetensors) of a real finished run, verified against PyTorch."""
import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_model

from tl_core.models import backbones
from tl_core.use import export
from tl_core.__main__ import main as cli
from tl_core.data.datasets import open_image
from tl_core.use.export import ExportMismatch, export_run
from tl_core.use.predict import Predictor

BUNDLE = ["labels.json", "preprocess.json", "MODEL_CARD.md", "verification.json", "predict_example.py"]


@pytest.fixture(scope="module")
def run_dir(head_run):
    """The session's real finished run (embedded EfficientNet-Lite0, head trained at 96 px)."""
    return head_run


@pytest.fixture(scope="module")
def onnx_report(run_dir):
    return export_run(run_dir, "onnx")


def _n_val(run_dir: Path) -> int:
    return len(list(csv.DictReader((run_dir / "predictions.csv").open())))


def test_onnx_bundle_agrees_with_pytorch(run_dir, onnx_report):
    report = onnx_report
    assert report["verified"] and report["source"] == "validation"
    assert report["exporter"] == "torch.onnx (dynamo)"  # not the deprecated TorchScript-based fallback
    assert report["images"] == _n_val(run_dir) >= 4
    assert report["top1_agreement"] == 1.0 and report["top1_exact"] == report["images"]
    assert report["max_prob_diff"] < 1e-4  # fp32 ONNX Runtime vs PyTorch: ~1e-6, far inside the 1e-3 limit
    bundle = Path(report["bundle"])
    assert bundle == run_dir / "export" / "onnx" and report["path"] == str(bundle / "model.onnx")
    for name in ["model.onnx", *BUNDLE]:
        assert (bundle / name).is_file(), name
    assert not list(bundle.glob(".*"))  # no staged leftovers
    verification = json.loads((bundle / "verification.json").read_text())
    assert verification["model_file"] == "model.onnx" and str(run_dir) not in json.dumps(verification)
    assert {k: verification[k] for k in ("images", "top1_agreement", "max_prob_diff", "verified")} == \
        {k: report[k] for k in ("images", "top1_agreement", "max_prob_diff", "verified")}
    assert json.loads((bundle / "labels.json").read_text()) == json.loads((run_dir / "labels.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "tf_efficientnet_lite0" in card and f"{metrics['val_acc']:.1%}" in card
    assert "Trouser" in card and "Intended use" in card
    assert f"Weights kept: epoch {metrics['kept']['epoch']} ({metrics['kept']['phase']} phase)" in card
    with zipfile.ZipFile(report["zip"]) as archive:
        names = {Path(n).name for n in archive.namelist()}
    assert Path(report["zip"]) == run_dir / "export" / "onnx.zip" and names == {"model.onnx", *BUNDLE}


def test_onnx_model_takes_any_batch_size(run_dir, onnx_report):
    import onnx
    import onnxruntime as ort

    model = onnx.load(onnx_report["path"])
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    predictor = Predictor(run_dir)
    session = ort.InferenceSession(onnx_report["path"], providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, predictor.size, predictor.size)
    with torch.no_grad():
        expected = predictor.model(x).numpy()
    for n in (1, 3):
        got = session.run(None, {"input": x[:n].numpy()})[0]
        np.testing.assert_allclose(got, expected[:n], atol=1e-4, rtol=1e-4)


def test_predict_example_in_the_bundle_runs(run_dir, onnx_report):
    image = next(csv.DictReader((run_dir / "predictions.csv").open()))["path"]
    done = subprocess.run([sys.executable, str(Path(onnx_report["bundle"]) / "predict_example.py"), image],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    top = Predictor(run_dir).predict_files([image], top_k=1)[0]["top"][0]
    assert f"{top['label']} {top['prob']:.1%}" in done.stdout.split(": ", 1)[1]


def _example_probs(bundle: Path, images: list[str]) -> np.ndarray:
    done = subprocess.run([sys.executable, str(bundle / "predict_example.py"), "--json", *images],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == images
    return np.array([line["probs"] for line in lines])


def test_the_bundle_example_is_a_real_file_that_agrees_with_tl_core(run_dir, onnx_report, tmp_path):
    """The example shipped in every bundle is tl_core/use/bundle/predict_example.py itself, and on images of
    several classes it gives tl_core's own probabilities, with the ONNX and the TorchScript model."""
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    images = list({row["label"]: row["path"] for row in rows}.values())[:3]  # one image of each of 3 classes
    assert len(images) == 3
    expected = Predictor(run_dir).predict_images([open_image(path) for path in images]).numpy()
    torchscript = Path(export_run(run_dir, "torchscript", out_dir=tmp_path / "ts")["bundle"])
    for bundle in (Path(onnx_report["bundle"]), torchscript):
        assert (bundle / "predict_example.py").read_bytes() == export.PREDICT_EXAMPLE.read_bytes()
        probs = _example_probs(bundle, images)
        assert (probs.argmax(1) == expected.argmax(1)).all()
        assert np.abs(probs - expected).max() < 1e-4, bundle.name


def test_torchscript_bundle_agrees_with_pytorch(run_dir, tmp_path):
    report = export_run(run_dir, "torchscript", out_dir=tmp_path / "ts")
    assert report["verified"] and report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4
    assert report["images"] == _n_val(run_dir)
    assert Path(report["path"]) == tmp_path / "ts" / "model.torchscript.pt"
    assert Path(report["zip"]) == tmp_path / "ts.zip"
    assert all((tmp_path / "ts" / name).is_file() for name in BUNDLE)


def test_safetensors_bundle_round_trips(run_dir, tmp_path):
    report = export_run(run_dir, "safetensors", out_dir=tmp_path / "st")
    assert report["verified"] and report["max_prob_diff"] < 1e-6
    exported, original = load_file(report["path"]), load_file(str(run_dir / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    preprocess = json.loads((tmp_path / "st" / "preprocess.json").read_text())
    model = timm.create_model(preprocess["backbone"], num_classes=preprocess["num_classes"])
    model.load_state_dict(exported)  # a plain timm model takes the weights as they are


def test_corrupted_onnx_export_fails_loudly(run_dir, onnx_report, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    def export_with_damaged_head(predictor, path):
        model = onnx.load(onnx_report["path"])
        head = max((t for t in model.graph.initializer if t.dims == [4, 1280]), key=lambda t: t.name)
        noisy = numpy_helper.to_array(head) + np.random.default_rng(0).normal(0, 0.5, tuple(head.dims))
        head.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), head.name))
        onnx.save(model, str(path))
        return "test: damaged"

    monkeypatch.setitem(export._EXPORTERS, "onnx", export_with_damaged_head)
    with pytest.raises(ExportMismatch, match="does not reproduce the PyTorch model") as caught:
        export_run(run_dir, "onnx", out_dir=tmp_path / "bad")
    report = caught.value.report
    assert not report["verified"] and report["max_prob_diff"] > 1e-3
    assert not (tmp_path / "bad" / "model.onnx").exists() and not list((tmp_path / "bad").glob(".*"))
    assert not (tmp_path / "bad.zip").exists()


def test_export_against_other_weights_fails(run_dir, tmp_path, monkeypatch):
    """A safetensors file of different weights (another head) must not pass as this run's model."""
    def export_other_model(predictor, path):
        other = backbones.create_model(predictor.preprocess["backbone"], len(predictor.classes), weights="none")
        save_model(other, str(path))
        return "test: other weights"

    monkeypatch.setitem(export._EXPORTERS, "safetensors", export_other_model)
    with pytest.raises(ExportMismatch):
        export_run(run_dir, "safetensors", out_dir=tmp_path / "other")


def test_cli_export_prints_verified_json(run_dir, tmp_path, capsys):
    assert cli(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "cli")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True and report["format"] == "safetensors"
    assert Path(report["path"]).is_file() and Path(report["zip"]).is_file()


def test_unknown_format_is_refused(run_dir):
    with pytest.raises(ValueError, match="not one of onnx, torchscript, safetensors"):
        export_run(run_dir, "tflite")


def _fake_run(root: Path, backbone: str, classes: list[str], images: list[Path]) -> Path:
    """A finished run folder around a randomly initialised timm model, as the fit loop would write it."""
    torch.manual_seed(0)
    model = backbones.create_model(backbone, len(classes), weights="none").eval()
    root.mkdir(parents=True)
    save_model(model, str(root / "model.safetensors"))
    preprocess = {"backbone": backbone, "num_classes": len(classes), **backbones.data_config(model)}
    (root / "preprocess.json").write_text(json.dumps({**preprocess, "input_size": list(preprocess["input_size"])}))
    (root / "labels.json").write_text(json.dumps({"classes": classes}))
    (root / "config.json").write_text(json.dumps({"config": {"backbone": backbone, "weights": "none"}}))
    with open(root / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", "confidence"])
        writer.writerows([str(p), classes[0], classes[0], "0.5"] for p in images)
    return root


def test_vit_exports_to_onnx(small_sample, tmp_path):
    images = sorted(small_sample.glob("*/*.png"))[::4]
    run = _fake_run(tmp_path / "vit_run", "test_vit", ["a", "b", "c"], images)
    report = export_run(run, "onnx")
    assert report["verified"] and report["images"] == len(images) and report["source"] == "validation"
    assert report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4
    assert report["exporter"] == "torch.onnx (dynamo)"
    assert "test_vit" in (run / "export" / "onnx" / "MODEL_CARD.md").read_text()


def test_missing_validation_images_fall_back_to_noise(small_sample, tmp_path):
    run = _fake_run(tmp_path / "moved", "test_vit", ["a", "b"], [tmp_path / "gone.png"])
    report = export_run(run, "safetensors")
    assert report["verified"] and report["source"] == "synthetic" and report["images"] > 0
