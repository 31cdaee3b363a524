"""The detect kind end to end on small real-looking sets: CLI train (COCO and YOLO), evaluate, predict --json,
export to ONNX verified with ONNX Runtime and its standalone program; layer groups, the Auto plan, cancel and
the divergence guard."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tl_core.__main__ import main as cli
from tl_core.detect.sample import write_set
from tl_core.ops.runs import RunFolder, read_events, read_metrics, read_status

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--image-size", "128", "--batch-size", "8", "--early-stopping", "0"]


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    """A real detector: the embedded Lite0, frozen backbone, 6 epochs at 128 px on 48 COCO pictures."""
    import os

    home = tmp_path_factory.mktemp("detect_home")
    data = write_set(tmp_path_factory.mktemp("coco") / "set", 48, "coco", seed=11, size=128, object_px=(30, 56))
    old = os.environ.get("TL_STUDIO_HOME")
    os.environ["TL_STUDIO_HOME"] = str(home)
    try:
        assert cli(["train", "--task", "detect", "--data", str(data), "--freeze", "head", "--epochs", "6",
                    *FAST]) == 0
    finally:
        if old is None:
            os.environ.pop("TL_STUDIO_HOME")
        else:
            os.environ["TL_STUDIO_HOME"] = old
    run_dir = sorted((home / "runs").iterdir())[-1]
    return run_dir, data, home


def test_cli_train_writes_a_run_that_finds_objects(detect_run):
    run_dir, _, _ = detect_run
    assert read_status(run_dir)["state"] == "done"
    metrics = read_metrics(run_dir)
    assert metrics["task"] == "detect" and metrics["classes"] == ["Trouser", "Bag", "Sneaker"]
    assert metrics["map50"] > 0.15  # an untrained head scores about 0
    assert 0 <= metrics["map"] <= metrics["map50"]
    assert len(metrics["box_confusion"]) == 4 and metrics["confusion_labels"][-1] == "background"
    events = read_events(run_dir)
    epochs = [e for e in events if e["event"] == "epoch_end"]
    assert len(epochs) == 6
    assert {"train_loss", "train_classification", "train_box", "val_map50", "images_per_s"} <= epochs[0].keys()
    batch = next(e for e in events if e["event"] == "batch_end")
    assert {"classification", "bbox_regression", "bbox_ctrness", "loss"} <= batch.keys()
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    detections = json.loads(RunFolder(run_dir).detections.read_text())
    assert len(detections["images"]) == metrics["n_val"]


def test_cli_evaluate_and_predict_json(detect_run, tmp_path, capsys, monkeypatch):
    run_dir, _, home = detect_run
    monkeypatch.setenv("TL_STUDIO_HOME", str(home))
    held_out = write_set(tmp_path / "held_out", 12, "yolo", seed=99, size=128, object_px=(30, 56))  # new scenes
    capsys.readouterr()
    assert cli(["evaluate", str(run_dir), "--data", str(held_out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"map50", "map", "per_class"} <= report.keys()
    assert set(report["per_class"]) == {"Trouser", "Bag", "Sneaker"}
    assert report["images"] == 12 and report["map50"] > 0.1
    picture = sorted((held_out / "images").glob("*.jpg"))[0]
    assert cli(["predict", str(run_dir), str(picture), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["image"] == str(picture)
    for box in answer["boxes"]:
        assert box["label"] in ("Trouser", "Bag", "Sneaker") and 0.3 <= box["score"] <= 1
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128


def test_export_onnx_is_verified_and_its_program_draws_boxes(detect_run, tmp_path, capsys, monkeypatch):
    run_dir, data, home = detect_run
    monkeypatch.setenv("TL_STUDIO_HOME", str(home))
    capsys.readouterr()
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] and report["min_iou"] >= 0.99 and report["max_score_diff"] <= 1e-3
    assert report["boxes_checked"] > 0
    picture = tmp_path / "scene.jpg"
    picture.write_bytes(sorted((data / "images").glob("*.jpg"))[0].read_bytes())
    done = subprocess.run([sys.executable, str(tmp_path / "bundle" / "predict_example.py"), "--json", str(picture)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from_bundle = json.loads(done.stdout.strip().splitlines()[-1])
    from tl_core.detect.predict import DetectPredictor
    from PIL import Image

    from_core = DetectPredictor(run_dir).predict(Image.open(picture).convert("RGB"))
    assert [b["label"] for b in from_bundle["boxes"]] == [b["label"] for b in from_core["boxes"]]
    for a, b in zip(from_bundle["boxes"], from_core["boxes"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
        assert a["box"] == pytest.approx(b["box"], abs=0.5)
    assert Image.open(f"{picture}.boxes.png").size == Image.open(picture).size


def test_augmentation_moves_boxes_with_the_picture_and_keeps_them_valid():
    import torch

    from tl_core.detect import augment

    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, 10:20, 5:25] = 255
    target = {"boxes": torch.tensor([[5.0, 10.0, 25.0, 20.0]]), "labels": torch.tensor([1])}
    flip = augment.pipeline("light", 64).transforms[0]
    flipped, moved = augment.apply(type(flip)(p=1.0), image, target)
    assert moved["boxes"].tolist() == [[39.0, 10.0, 59.0, 20.0]]
    assert flipped[:, 10:20, 39:59].min() == 255
    torch.manual_seed(0)
    for preset in ("light", "crop", "strong"):
        for _ in range(20):
            out, kept = augment.apply(augment.pipeline(preset, 64), image, target)
            assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
            boxes = kept["boxes"]
            assert len(boxes) == len(kept["labels"]) <= 1
            if len(boxes):
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
                assert boxes.min() >= 0 and boxes.max() <= 64


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet"])
def test_layer_groups_are_the_classifiers_and_freeze_plans_apply(backbone):
    from tl_core.models import layers
    from tl_core.models.backbones import create_model
    from tl_core.detect.model import build, layer_groups

    model = build(backbone, 2, "none", 96)
    groups = layer_groups(model)
    classifier = layers.layer_groups(create_model(backbone, 2, weights="none"))
    assert [g.name for g in groups] == [g.name for g in classifier]  # a plan from the Layers page means the same
    head = groups[-1]
    assert all(not n.startswith("backbone.body.") for n in head.param_names)  # pyramid + FCOS head
    assert any(n.startswith("backbone.fpn.") for n in head.param_names)
    counts = layers.apply_freeze(model, groups, layers.parse_freeze("head", groups))
    assert counts["trainable_params"] == head.num_params
    top2 = layers.apply_freeze(model, groups, layers.parse_freeze("top-2", groups))
    assert top2["trainable_groups"] == [g.name for g in groups[-3:]]
    named = layers.apply_freeze(model, groups, layers.parse_freeze(groups[-2].name, groups))
    assert named["trainable_params"] == head.num_params + groups[-2].num_params


def _yolo_run(tmp_path, **settings):
    from tl_core import kinds
    from tl_core.config import RunConfig
    from tl_core.ops.runs import create_run

    data = write_set(tmp_path / "yolo", 10, "yolo", seed=5, size=96)
    root = kinds.get("detect").call("ingest", data)
    config = RunConfig(dataset_dir=str(root), task="detect", backbone="test_efficientnet", weights="none",
                       image_size=96, batch_size=4, epochs=1, **settings)
    return create_run(config)


def test_auto_plan_measures_and_keeps_a_plan(tmp_path):
    from tl_core import worker as train

    run_dir = _yolo_run(tmp_path, freeze="auto")
    train.run(run_dir)
    plan = json.loads(RunFolder(run_dir).plan.read_text())
    assert [c["freeze"] for c in plan["candidates"]] == ["head", "top-3"]
    start = next(e for e in read_events(run_dir) if e["event"] == "fit_start")
    assert start["freeze"] == plan["kept"]
    progress = [e["message"] for e in read_events(run_dir) if e["event"] == "notice" and "epoch 1 of 1" in e["message"]]
    assert len(progress) == 2  # each candidate's epochs are told while measured, not only the verdict


@pytest.mark.usefixtures("navigation_pages", "fake_jobs")
def test_the_layers_page_shows_a_detectors_auto_measurement_and_no_classifier_figures(tmp_path):
    """The Layers page reads the latest Auto run on the chosen dataset: a detector's plan.json must show as its
    sentence (it once lacked "words" and raised), and the classifier's accuracy bench is not offered for boxes."""
    from apptest_support import open_page, plain
    from tl_core import worker as train
    from tl_core.ops.runs import read_config_record

    run_dir = _yolo_run(tmp_path, freeze="auto")
    train.run(run_dir)
    plan = json.loads(RunFolder(run_dir).plan.read_text())
    at = open_page("pages/3_Layers.py", task="detect", backbone="test_efficientnet", freeze_preset="auto",
                   freeze="auto", dataset_dir=read_config_record(run_dir)["config"]["dataset_dir"])
    assert not at.exception
    captions = " ".join(plain(c.value) for c in at.caption)
    assert "From the Auto run" in captions and f"kept {plan['kept']}" in captions
    assert "What each plan is expected to give" not in " ".join(m.value for m in at.markdown)
    # the classifier's tools are not offered for boxes: its time budget, its cost estimate, its feature choice
    assert "mAP@50 is higher by more than 0.05" in captions
    assert not [s for s in at.slider if s.key == "auto_budget"] and not [r for r in at.radio if r.key == "features"]
    assert not [m for m in at.metric if "per epoch" in m.label.lower()]
    assert [t for t in at.toggle if t.key == "bn_keep_eval"]  # the BatchNorm policy applies to a detector too


def test_stop_file_cancels(tmp_path):
    from tl_core import worker as train

    run_dir = _yolo_run(tmp_path, freeze="head")
    RunFolder(run_dir).stop.touch()
    train.run(run_dir)
    assert read_status(run_dir)["state"] == "cancelled"


def test_divergence_restarts_once_at_a_lower_rate_then_fails(tmp_path, monkeypatch):
    from tl_core import worker as train
    from tl_core.detect import fit

    monkeypatch.setattr(fit, "DIVERGED_OVER_START", 1e-6)  # every second batch counts as a blow-up
    run_dir = _yolo_run(tmp_path, freeze="head")
    with pytest.raises(Exception, match="unstable twice"):
        train.run(run_dir)
    assert read_status(run_dir)["state"] == "failed"
    assert any("tenth of the rate" in e.get("message", "") for e in read_events(run_dir) if e["event"] == "notice")


def test_a_set_without_boxes_fails_with_what_to_do(tmp_path):
    from tl_core import worker as train
    from tl_core.config import RunConfig
    from tl_core.detect.editing import new_boxset
    from tl_core.ops.runs import create_run

    pictures = sorted((write_set(tmp_path / "scenes", 4, "coco", seed=1, size=96) / "images").glob("*.jpg"))
    root = new_boxset([(p.name, p.read_bytes()) for p in pictures], ["cup"])
    run_dir = create_run(RunConfig(dataset_dir=str(root), task="detect", backbone="test_efficientnet",
                                   weights="none", image_size=96, epochs=1, freeze="head"))
    with pytest.raises(ValueError, match="no usable box"):
        train.run(run_dir)
    assert "draw or import boxes" in read_status(run_dir)["error"]


def test_a_frozen_body_computed_once_gives_the_same_losses_and_boxes():
    import torch

    from tl_core.models import layers
    from tl_core.detect.model import build, frozen_body_outputs, given_stages, layer_groups

    torch.manual_seed(0)
    model = build("test_efficientnet", 3, "none", 64)
    groups = layer_groups(model)
    layers.apply_freeze(model, groups, layers.parse_freeze("head", groups))
    pixels = (torch.rand(3, 3, 64, 64) * 255).to(torch.uint8)
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([k])} for k in range(3)]
    stages = frozen_body_outputs(model, pixels, "cpu")
    images = [p.float() / 255 for p in pixels]
    layers.set_train_mode(model)
    plain = model(images, targets)
    with given_stages(model, [s[:3] for s in stages]):
        cached = model(images, targets)
    for name in plain:
        assert cached[name].item() == pytest.approx(plain[name].item(), rel=1e-5, abs=1e-6)
    model.eval()
    with torch.no_grad(), given_stages(model, [s[1:2] for s in stages]):
        found = model(images[1:2])[0]
    with torch.no_grad():
        again = model(images[1:2])[0]
    assert torch.allclose(found["scores"], again["scores"], atol=1e-5)


@pytest.mark.parametrize("augment, cached", [("none", True), ("light", False)])
def test_the_body_is_cached_only_when_frozen_and_unaugmented(tmp_path, augment, cached):
    from tl_core import worker as train

    run_dir = _yolo_run(tmp_path, freeze="head", augment=augment)
    train.run(run_dir)
    phase = next(e for e in read_events(run_dir) if e["event"] == "phase_start")
    assert phase["body_cached"] is cached
    assert read_status(run_dir)["state"] == "done"


def test_the_epoch_check_scores_as_the_full_metrics_and_the_confusion_counts_misses_and_false_alarms():
    import torch

    from tl_core.detect.evaluate import box_metrics, map_scores

    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 95.0]]),
                "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]
    predictions = [{"boxes": torch.tensor([[11.0, 10.0, 50.0, 52.0], [0.0, 70.0, 20.0, 90.0]]),
                    "scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([0, 1])},  # a hit, a false alarm
                   {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "scores": torch.tensor([0.8]),
                    "labels": torch.tensor([1])}]  # the right place, the wrong class
    full = box_metrics(predictions, targets, ["a", "b", "c"])
    quick = map_scores(predictions, targets)
    assert quick == {"map50": full["map50"], "map": full["map"]}
    assert full["per_class"]["a"]["ap50"] == pytest.approx(1.0)
    table = full["box_confusion"]  # rows truth a, b, c, background; columns predicted
    assert table[0][0] == 1  # a found as a
    assert table[1][3] == 1  # the b object missed
    assert table[3][1] == 1  # a false alarm of b
    assert table[2][1] == 1  # c taken for b
    assert sum(map(sum, table)) == 4
