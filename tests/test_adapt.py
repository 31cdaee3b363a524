"""Domain adaptation (tl_core/adapt.py): the shift meter, AdaBN, alignment, gradient reversal, a DANN run,
and unlabelled target uploads ingested as safely as training data."""
import io
import stat
import struct
import zipfile
import zlib

import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from tl_core import adapt
from tl_core.models import backbones
from tl_core import worker
from tl_core.fit.batches import normalizer
from tl_core.config import ConfigError, RunConfig
from tl_core.data.datasets import decode_images, ingest_files, ingest_folder, ingest_zip
from tl_core.data.datasets.unlabelled import (UNLABELLED, ingest_unlabelled_files, ingest_unlabelled_folder,
                                              ingest_unlabelled_zip)
from tl_core.use.predict import evaluate_folder
from tl_core.ops.runs import RunFolder, create_run, read_events, read_metrics, read_status
from tl_core.data.sample_data import SAMPLE_DIR

CLASSES = ("Trouser", "Bag", "Sneaker", "Dress")


def _sample_paths(start: int, stop: int, classes=CLASSES) -> list:
    return [p for c in classes for p in sorted((SAMPLE_DIR / c).glob("*.png"))[start:stop]]


def _write(paths, dest, inverted: bool, class_folders: bool):
    for p in paths:
        out = dest / (p.parent.name if class_folders else "any/depth") / f"{p.parent.name}_{p.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(p).convert("L")
        (ImageOps.invert(image) if inverted else image).save(out)
    return dest


@pytest.fixture(scope="module")
def inverted_target(tmp_path_factory):
    """The sample's images 8..20 of each class with reversed polarity: unlabelled (any layout) and labelled."""
    root = tmp_path_factory.mktemp("target")
    return (_write(_sample_paths(8, 20), root / "unlabelled", True, False),
            _write(_sample_paths(20, 30), root / "test", True, True))


def _pixels(paths, size=64):
    return decode_images(paths, size, 1.0, "bilinear")


def _lite0(size=64):
    model = backbones.create_model("tf_efficientnet_lite0", len(CLASSES), weights="embedded")
    return model, normalizer(backbones.data_config(model, size), torch.device("cpu"), False)


def _inverted(pixels):
    return 255 - pixels


# ---- the engine's pieces -------------------------------------------------------------------------
def test_shift_meter_tells_a_real_shift_from_none():
    model, to_device = _lite0()
    a, b = _pixels(_sample_paths(0, 15)), _pixels(_sample_paths(15, 30))
    labels = [k for k in range(len(CLASSES)) for _ in range(15)]
    same = adapt.shift_meter(adapt.pooled_features(model, to_device, a), adapt.pooled_features(model, to_device, b))
    shifted = adapt.shift_meter(adapt.pooled_features(model, to_device, a),
                                adapt.pooled_features(model, to_device, _inverted(b)), labels, list(CLASSES))
    assert same["pad"] < adapt.PAD_ALIKE and "look like" in same["words"]
    assert shifted["pad"] > adapt.PAD_VERY_DIFFERENT and "very different" in shifted["words"]
    assert len(shifted["typical_target"]) == 4 and all(0 <= i < 60 for i in shifted["typical_target"])
    assert {row["class"] for row in shifted["least_overlap"]} <= set(CLASSES)


def test_adabn_changes_only_batchnorm_statistics_and_matches_the_sources_normalised_activations():
    model, to_device = _lite0()
    source, target = to_device(_pixels(_sample_paths(0, 10))), to_device(_inverted(_pixels(_sample_paths(10, 20))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first_bn = adapt.batchnorms(model)[0]
    normalised = {}

    def record(name):  # the first BatchNorm's normalised input, (x - running_mean) / sqrt(running_var + eps)
        def hook(bn, args):
            x = args[0].transpose(0, 1).flatten(1)
            normalised[name] = ((x - bn.running_mean[:, None]) / (bn.running_var[:, None] + bn.eps).sqrt()).mean(1)
        return hook

    model.eval()
    hook = first_bn.register_forward_pre_hook(record("source"))
    with torch.no_grad():
        model(source)
    hook.remove()

    assert adapt.adapt_batchnorm(model, source, target) == len(adapt.batchnorms(model)) > 10

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("running_var") for k in changed)
    hook = first_bn.register_forward_pre_hook(record("target"))
    with torch.no_grad():
        model(target)
    hook.remove()
    # the inverted images' activations are normalised to land where the source's did
    assert torch.allclose(normalised["target"], normalised["source"], atol=1e-3)


def test_gradient_reversal_flips_the_gradients_sign_with_the_set_weight():
    x = torch.randn(5, 7, requires_grad=True)
    w = torch.randn(5, 7)
    y = adapt.reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w)
    weights = [adapt.reversal_weight(p / 10) for p in range(11)]
    assert weights[0] == 0 and weights == sorted(weights) and 0.99 < weights[-1] < 1


def test_alignment_is_the_identity_when_source_and_target_are_the_same():
    model, to_device = _lite0()
    feats = adapt.pooled_features(model, to_device, _pixels(_sample_paths(0, 10)))
    head = nn.Linear(feats.shape[1], 4)
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    adapt.fold_alignment(head, feats, feats.clone())
    assert torch.allclose(head.weight, weight) and torch.allclose(head.bias, bias, atol=1e-5)


def test_alignment_maps_the_targets_features_onto_the_sources():
    source = torch.rand(50, 8) * torch.linspace(0.5, 2, 8) + torch.linspace(0, 3, 8)
    target = source * 0.5 - 1.0  # the same images, a different "camera": each feature scaled and moved
    head = nn.Linear(8, 3)
    with torch.no_grad():
        expected = head(source)
        adapt.fold_alignment(head, source, target)
        assert torch.allclose(head(target), expected, atol=1e-4)


def test_settings_that_cannot_adapt_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="adabn adapts to target images"):
        RunConfig(dataset_dir="d", adapt="adabn")
    with pytest.raises(ConfigError, match="layers must train"):
        RunConfig(dataset_dir="d", target_dir="t", adapt="dann", freeze="head")
    assert adapt.plan_for(RunConfig(dataset_dir="d", adapt="auto")).callbacks == []  # no target: nothing


# ---- runs ------------------------------------------------------------------------------------------------
def test_a_dann_run_writes_the_whole_run_folder_contract(small_sample, inverted_target):
    unlabelled, test = inverted_target
    config = RunConfig(dataset_dir=str(ingest_folder(small_sample).root),
                       target_dir=str(ingest_unlabelled_folder(unlabelled).root),
                       target_test_dir=str(ingest_folder(test).root), adapt="dann", freeze="top-1", epochs=2,
                       image_size=64, batch_size=8, early_stopping=0)
    run_dir = create_run(config)
    metrics = worker.run(run_dir)  # the worker's own path: the task and callbacks come from config.json
    folder = RunFolder(run_dir)
    for path in (folder.config, folder.facts, folder.status, folder.events, folder.metrics, folder.predictions,
                 folder.weights, folder.labels, folder.preprocess):
        assert path.is_file(), path.name
    assert read_status(run_dir)["state"] == "done"
    assert metrics == read_metrics(run_dir)
    target = metrics["target"]
    assert target["method"] == "dann" and target["n_target"] == 48 and target["n_target_test"] == 40
    assert 0 <= target["adapted"]["target_acc"] <= 1 and target["shift"]["pad"] > adapt.PAD_ALIKE
    # the domain head trained behind a reversal weight warmed up to its end value (2 epochs × 3 batches)
    assert target["dann"]["reversal_weight"] == pytest.approx(adapt.reversal_weight(1.0), abs=1e-4)
    assert 0 < target["dann"]["domain_loss"] < 5
    # DANN keeps where its warm-up ends, whatever source validation preferred
    assert metrics["kept"]["phase"] == "finetune" and target["dann"]["kept_epoch"] == metrics["epochs_run"]
    notices = [e["message"] for e in read_events(run_dir) if e["event"] == "notice"]
    assert any(m.startswith("shift meter:") for m in notices)
    assert any(m.startswith("dann: target accuracy") for m in notices)


@pytest.fixture(scope="module")
def adabn_run(small_sample, inverted_target, tmp_path_factory):
    unlabelled, test = inverted_target
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(tmp_path_factory.mktemp("adabn") / "workspace"))
        from tl_core.__main__ import main as cli

        run_dir = tmp_path_factory.mktemp("adabn_run") / "run"
        assert cli(["train", "--data", str(small_sample), "--target-data", str(unlabelled), "--target-test", str(test),
                    "--adapt", "adabn", "--epochs", "2", "--image-size", "64", "--run-dir", str(run_dir)]) == 0
        yield run_dir, test


def test_an_adabn_run_records_source_only_against_adapted(adabn_run):
    run_dir, _ = adabn_run
    target = read_metrics(run_dir)["target"]
    assert target["method"] == "adabn" and target["adabn_layers"] > 10
    for side in ("source_only", "adapted"):
        assert 0 <= target[side]["target_acc"] <= 1 and 0 < target[side]["confidence"] <= 1
    assert target["source_only"] != target["adapted"]  # BatchNorm statistics changed what the model predicts


def test_evaluate_applies_what_the_run_adapted(adabn_run):
    run_dir, test = adabn_run
    target = read_metrics(run_dir)["target"]
    assert evaluate_folder(run_dir, test)["accuracy"] == pytest.approx(target["adapted"]["target_acc"], abs=1e-4)


# ---- ingest of unlabelled images ---------------------------------------------------------------------------
def _png(value=50, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, "PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    data = bytearray(_png(0, (1, 1)))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


HOSTILE = [("notes.png", b"my shopping list\n"), ("empty.jpg", b""), ("bomb.png", _bomb()),
           ("cut.png", _png(80, (64, 64))[:60]), (".DS_Store", b"\x00\x00\x00\x01Bud1")]


def test_hostile_target_uploads_get_the_same_verdicts_as_training_data(tmp_path):
    good = [(f"ok{i}.png", _png(10 * i)) for i in range(3)]
    labelled = ingest_files([(n, d, "a") for n, d in HOSTILE + good] + [("b.png", _png(200), "b")])
    unlabelled = ingest_unlabelled_files(HOSTILE + good)
    verdicts = {r["name"]: r["reason"] for r in labelled.refused}
    assert {r["name"]: r["reason"] for r in unlabelled.refused} == verdicts
    assert set(verdicts) == {"notes.png", "empty.jpg", "bomb.png", "cut.png"}
    assert unlabelled.classes == [UNLABELLED] and len(unlabelled.items) == 3


def test_hostile_target_zips_get_the_same_verdicts_as_training_data(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/ok.png", _png(10))
        archive.writestr("b/ok.png", _png(90))
        archive.writestr(zipfile.ZipInfo("../evil.png"), _png())
        link = zipfile.ZipInfo("a/link.png")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("a/bomb.png", bytes(2 << 20))
        archive.writestr("a/notes.png", b"not an image")
    labelled = ingest_zip(buffer.getvalue())
    unlabelled = ingest_unlabelled_zip(buffer.getvalue())
    assert {r["name"]: r["reason"] for r in unlabelled.refused} == {r["name"]: r["reason"] for r in labelled.refused}
    assert len(unlabelled.refused) == 4 and len(unlabelled.items) == 2
    assert not any("evil" in p.name or "link" in p.name for p in tmp_path.parent.rglob("*evil*"))


def test_an_exported_adapted_model_reproduces_tl_cores_predictions_on_target_images(adabn_run, tmp_path):
    from tl_core.use.export import export_run

    run_dir, test = adabn_run
    images = sorted(test.glob("*/*.png"))
    report = export_run(run_dir, "onnx", out_dir=tmp_path / "onnx", images=images)
    assert report["verified"] and report["images"] == len(images) == 40
    assert report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4


def test_auto_picks_the_surest_candidate_on_the_target_without_its_labels(small_sample, inverted_target):
    unlabelled, test = inverted_target
    config = RunConfig(dataset_dir=str(ingest_folder(small_sample).root),
                       target_dir=str(ingest_unlabelled_folder(unlabelled).root),
                       target_test_dir=str(ingest_folder(test).root), adapt="auto", epochs=2, image_size=64)
    target = worker.run(create_run(config))["target"]
    entropies = target["quick_check"]["entropy"]
    assert set(entropies) == {"none", "adabn", "align"} and target["asked"] == "auto"
    assert target["method"] == min(entropies, key=entropies.get)
    chosen = target.get("adapted") or target["source_only"]
    assert chosen["entropy"] == pytest.approx(entropies[target["method"]], abs=1e-3)
