"""The anomaly task kind end to end: ingest of its layouts, fit, the CLI contract, bad input, the audit.

Data: synthetic defects with exact masks pasted on scikit-image's brick photograph (tl_core.anomaly.synthetic);
the embedded EfficientNet-Lite0 at 128 px. One run is fitted per session and copied where a test changes it.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from tl_core.anomaly import audit, memory, threshold
from tl_core.anomaly.data import (good_paths, ingest_anomaly_files, ingest_anomaly_folder, labelled_samples,
                                  mask_problems, read_test_folder)
from tl_core.anomaly.synthetic import write_mvtec
from tl_core.data.datasets import DatasetError, load_dataset
from tl_core.ops.runs import RunFolder, read_events


@pytest.fixture(scope="session")
def brick(tmp_path_factory) -> Path:
    """An MVTec AD-layout folder: 16 good training bricks, 6 good and 4 × 4 defective test bricks, masks."""
    return write_mvtec(tmp_path_factory.mktemp("brick") / "brick", "brick", seed=0, n_train=16, n_test_good=6,
                       n_per_defect=4)


@pytest.fixture(scope="session")
def anomaly_run(brick, tmp_path_factory) -> Path:
    """A finished anomaly run on brick's good training images only, by the command line."""
    from tl_core.__main__ import main as cli

    root = tmp_path_factory.mktemp("anomaly_run")
    run_dir = root / "workspace" / "runs" / "20260101-000000-anomaly"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(root / "workspace"))
        assert cli(["train", "--task", "anomaly", "--data", str(brick / "train"), "--image-size", "128",
                    "--run-dir", str(run_dir)]) == 0
    return run_dir


def _cli_json(capsys, *args):
    from tl_core.__main__ import main as cli

    capsys.readouterr()
    assert cli(list(args)) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------- ingest


def test_mvtec_layout_is_ingested_with_its_masks_and_its_problems_listed(brick, tmp_path):
    data = tmp_path / "bottle"
    shutil.copytree(brick, data)
    (data / "test" / "hole" / "003.png").write_text("not an image")  # refused, and its mask with it
    Image.new("L", (99, 99)).save(data / "ground_truth" / "stain" / "000_mask.png")  # the wrong size
    Image.new("L", (256, 256)).save(data / "ground_truth" / "stain" / "404_mask.png")  # no image of that name
    (data / "license.txt").write_text("CC BY-NC-SA")
    dataset = ingest_anomaly_folder(data)
    assert len(good_paths(dataset.root)) == 16
    samples = labelled_samples(dataset.root)
    assert len(samples) == 6 + 4 * 4 - 1
    refused = {r["name"]: r["reason"] for r in dataset.refused}
    assert "not an image" in refused["test/hole/003.png"] or "image" in refused["test/hole/003.png"]
    assert "license.txt" in refused
    problems = {Path(p["name"]).name: p["reason"] for p in mask_problems(dataset.root)}
    assert "99×99" in problems["000_mask.png"]
    assert "no image stain/404" in problems["404_mask.png"]
    assert "refused" in problems["003_mask.png"]
    with_masks = [s for s in samples if s.mask is not None]
    assert len(with_masks) == 4 * 4 - 2 and all(s.anomalous for s in with_masks)
    assert all(s.mask.stem.startswith(s.path.stem) for s in with_masks)


def test_a_plain_folder_and_a_good_folder_without_masks(brick, tmp_path):
    plain = ingest_anomaly_folder(brick / "train" / "good")
    assert len(good_paths(plain.root)) == 16 and labelled_samples(plain.root) == []
    assert "a folder of good images" in plain.notes[0]
    data = tmp_path / "parts"
    shutil.copytree(brick / "train" / "good", data / "good")
    shutil.copytree(brick / "test" / "scratch", data / "scratch")
    dataset = ingest_anomaly_folder(data)
    assert [s.label for s in labelled_samples(dataset.root)] == ["scratch"] * 4
    assert any("scratch: no masks, so image scores only" in note for note in dataset.notes)


def test_one_good_image_is_refused_clearly(brick):
    data = [(p.name, p.read_bytes()) for p in sorted((brick / "train" / "good").iterdir())[:1]]
    with pytest.raises(DatasetError, match=r"only 1 good image \(000.png\).*at least 5 good images"):
        ingest_anomaly_files(data)


def test_uploads_with_defects_and_masks(brick):
    good = [(p.name, p.read_bytes()) for p in sorted((brick / "train" / "good").iterdir())[:6]]
    defects = [(p.name, p.read_bytes(), "hole") for p in sorted((brick / "test" / "hole").iterdir())[:2]]
    masks = [(p.name, p.read_bytes(), "hole") for p in sorted((brick / "ground_truth" / "hole").iterdir())[:1]]
    dataset = ingest_anomaly_files(good, defects, masks)
    samples = labelled_samples(dataset.root)
    assert [s.mask is not None for s in samples] == [True, False]
    assert load_dataset(dataset.root).source["anomaly"] is True


# ---------------------------------------------------------------- the memory bank


def test_greedy_coreset_covers_the_patches_better_than_a_random_subset():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 152, generator=generator) * 5
    features = centres[torch.randint(40, (4000,), generator=generator)] + torch.randn(4000, 152, generator=generator)
    chosen, cost = memory.greedy_coreset(features, 60)
    assert cost["kept"] == 60 and len(set(chosen.tolist())) == 60
    random_pick = torch.randperm(4000, generator=generator)[:60]
    greedy_cover = memory.nearest_distances(features, features[chosen]).max()
    random_cover = memory.nearest_distances(features, features[random_pick]).max()
    assert greedy_cover < random_cover


def test_leave_one_out_finds_the_exact_maximum_of_each_image():
    generator = torch.Generator().manual_seed(2)
    features, owner = torch.randn(600, 8, generator=generator), torch.arange(6).repeat_interleave(100)
    chosen, _ = memory.greedy_coreset(features, 150)
    bound, exact = memory.leave_one_out_scores(features, owner, chosen, 6, refine=100)
    brute = memory.nearest_distances(features, features, owner, owner).reshape(6, -1).amax(1)
    assert torch.allclose(exact, brute) and (bound >= exact - 1e-5).all()


def test_nearest_distances_agree_with_brute_force_and_leave_one_out_skips_the_owner():
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(500, 20, generator=generator), torch.randn(300, 20, generator=generator)
    brute = ((queries[:, None] - bank[None]) ** 2).sum(-1).sqrt().min(1).values
    assert torch.allclose(memory.nearest_distances(queries, bank, chunk=64), brute, atol=1e-4)
    assert torch.allclose(memory.patch_distances(queries, bank).min(1).values, brute, atol=1e-3)
    owners = torch.arange(300) % 3
    loo = memory.nearest_distances(bank, bank, owners, owners)
    assert (loo > 0).all()  # a patch never finds itself


def test_bank_size_is_bounded():
    assert memory.bank_size(500) == 500
    assert memory.bank_size(31_360) == 1000
    assert memory.bank_size(10_000_000) == memory.BANK_MAX


# ---------------------------------------------------------------- threshold and audit


def test_threshold_from_good_scores_and_best_f1():
    good = np.linspace(1, 2, 101)
    chosen = threshold.from_good(good, 0.05)
    assert chosen["value"] == pytest.approx(1.95) and "5%" in chosen["words"]
    scores = np.array([1.0, 1.2, 1.4, 3.0, 3.5, 1.3])
    labels = np.array([False, False, False, True, True, True])
    best = threshold.best_f1(scores, labels)
    assert 1.2 < best["value"] <= 1.3 and best["f1"] == pytest.approx(6 / 7)
    assert threshold.confusion(scores, labels, best["value"]) == {"caught": 3, "missed": 0, "false_alarms": 1,
                                                                   "passed": 2, "f1": pytest.approx(6 / 7, abs=1e-4)}


def test_outlier_audit_names_the_far_good_image():
    scores = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 3.0]
    names = [f"good/{i}.png" for i in range(7)]
    found = audit.outlier_goods(scores, names)
    assert [f["name"] for f in found] == ["good/6.png"] and "good/6.png" in found[0]["message"]
    assert audit.outlier_goods(scores[:-1], names[:-1]) == []


# ---------------------------------------------------------------- the CLI contract


def test_train_writes_the_run_and_says_what_it_did(anomaly_run):
    folder = RunFolder(anomaly_run)
    for path in (folder.weights, folder.preprocess, folder.threshold, folder.scores, folder.metrics):
        assert path.is_file(), path.name
    metrics = json.loads(folder.metrics.read_text())
    assert metrics["good_images"] == 16 and metrics["bank"]["kept"] <= metrics["bank"]["of"]
    events = read_events(anomaly_run)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "fit_start" and kinds[-1] == "fit_end" and "phase_start" in kinds
    assert any("memory bank:" in e.get("message", "") and "MB" in e["message"] for e in events)
    assert json.loads(folder.status.read_text())["state"] == "done"


def test_evaluate_prints_aurocs_threshold_and_f1(anomaly_run, brick, capsys):
    report = json.loads(_cli_json(capsys, "evaluate", str(anomaly_run), "--data", str(brick / "test")))
    assert report["image_auroc"] > 0.8 and report["pixel_auroc"] > 0.9  # ground_truth/ sits beside test/
    assert set(report["per_defect"]) == {"scratch", "stain", "hole", "foreign"}
    assert report["threshold"] > 0 and 0 <= report["f1"] <= 1
    assert report["per_defect"]["hole"]["image_auroc"] > 0.9
    # the category folder itself (test/ and ground_truth/ inside) reads the same
    same = json.loads(_cli_json(capsys, "evaluate", str(anomaly_run), "--data", str(brick)))
    assert same["image_auroc"] == pytest.approx(report["image_auroc"])


def test_evaluate_without_masks_gives_image_scores_only_and_says_so(anomaly_run, brick, tmp_path, capsys):
    test = tmp_path / "test"
    shutil.copytree(brick / "test", test)
    (test / "hole" / "001.png").write_bytes(b"\x89PNG broken")
    report = json.loads(_cli_json(capsys, "evaluate", str(anomaly_run), "--data", str(test)))
    assert report["pixel_auroc"] is None and report["image_auroc"] > 0.8
    assert any("image scores only" in note for note in report["notes"])
    assert [Path(r["name"]).name for r in report["refused"]] == ["001.png"]


def test_predict_json_scores_a_defect_above_a_good_image(anomaly_run, brick, capsys):
    out = _cli_json(capsys, "predict", str(anomaly_run), str(brick / "test" / "hole" / "000.png"),
                    str(brick / "test" / "good" / "000.png"), "--json")
    hole, good = (json.loads(line) for line in out.strip().splitlines())
    assert {"image", "score", "anomalous", "threshold"} <= set(hole)
    assert hole["score"] > good["score"] and hole["anomalous"] is True
    assert "resized" not in good


def test_a_test_image_of_another_size_is_resized_and_it_says_so(anomaly_run, brick, tmp_path, capsys):
    wide = tmp_path / "wide.png"
    Image.open(brick / "test" / "good" / "001.png").resize((320, 200)).save(wide)
    answer = json.loads(_cli_json(capsys, "predict", str(anomaly_run), str(wide), "--json"))
    assert "320×200 resized to 128×128" in answer["resized"] and "256×256" in answer["resized"]


def test_heat_map_is_hottest_on_the_defect(anomaly_run, brick):
    from tl_core.anomaly.predict import AnomalyPredictor

    predictor = AnomalyPredictor(anomaly_run)
    image = Image.open(brick / "test" / "hole" / "002.png")
    mask = np.asarray(Image.open(brick / "ground_truth" / "hole" / "002_mask.png")) > 0
    answer = predictor.explain(image)
    assert answer["map"].shape == mask.shape and answer["overlay"].size == image.size
    near = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(9)))  # the smoothing spreads the peak
    peak = np.unravel_index(answer["map"].argmax(), mask.shape)
    assert near[peak]
    assert answer["map"][mask].mean() > np.quantile(answer["map"][~near], 0.99)


def test_a_defect_in_the_good_set_is_named_by_the_audit(brick, tmp_path, capsys):
    from tl_core.__main__ import main as cli

    data = tmp_path / "good"
    shutil.copytree(brick / "train" / "good", data)
    shutil.copy(brick / "test" / "foreign" / "001.png", data / "odd_one.png")
    assert cli(["train", "--task", "anomaly", "--data", str(data)]) == 0  # 224 px: the patch is 20–35 px
    out = capsys.readouterr().out
    assert "odd_one.png scores far outside the other good images" in out


def test_fewer_than_five_good_images_is_a_clear_cli_error(brick, tmp_path, capsys):
    from tl_core.__main__ import main as cli

    data = tmp_path / "few"
    data.mkdir()
    for path in sorted((brick / "train" / "good").iterdir())[:3]:
        shutil.copy(path, data / path.name)
    assert cli(["train", "--task", "anomaly", "--data", str(data)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: only 3 good images (000.png, 001.png, 002.png)") and "at least 5" in error


def test_read_test_folder_lists_masks_that_match_no_image(brick, tmp_path):
    category = tmp_path / "cat"
    shutil.copytree(brick, category)
    Image.new("L", (256, 256)).save(category / "ground_truth" / "hole" / "777_mask.png")
    samples, refused, notes = read_test_folder(category / "test")
    assert len(samples) == 6 + 16 and sum(s.mask is not None for s in samples) == 16
    assert refused == [{"name": "ground_truth/hole/777_mask.png", "reason": "mask not used: no test image of that name"}]


# ---------------------------------------------------------------- export


def test_onnx_export_matches_tl_core_and_its_program_runs(anomaly_run, brick, tmp_path, capsys):
    import subprocess
    import sys

    import onnxruntime

    from tl_core.anomaly.predict import AnomalyPredictor

    report = json.loads(_cli_json(capsys, "export", str(anomaly_run), "--format", "onnx", "--out", str(tmp_path / "b")))
    assert report["verified"] and report["max_score_diff"] <= 1e-3 and report["same_verdicts"] == 8
    # an independent check on images the export never saw: a defect, a good one, another size
    images = [brick / "test" / "stain" / "001.png", brick / "test" / "good" / "003.png"]
    wide = tmp_path / "wide.png"
    Image.open(brick / "test" / "scratch" / "002.png").resize((300, 180)).save(wide)
    images.append(wide)
    predictor = AnomalyPredictor(anomaly_run)
    session = onnxruntime.InferenceSession(report["path"])
    for path in images:
        from tl_core.anomaly.features import image_to_pixels

        onnx_score, onnx_map = session.run(None, {"pixels": image_to_pixels(Image.open(path), 128).numpy()})
        score, heat = predictor.score_images([Image.open(path).convert("RGB")])
        assert abs(float(onnx_score[0]) - float(score[0])) <= 1e-3
        assert np.abs(onnx_map - heat).max() <= 1e-2
    maps = tmp_path / "maps"
    done = subprocess.run([sys.executable, report["program"], "--json", "--maps", str(maps), *map(str, images)],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    answers = [json.loads(line) for line in done.stdout.strip().splitlines()]
    expected = [predictor.predict(Image.open(path)) for path in images]
    for answer, want in zip(answers, expected):
        assert abs(answer["score"] - want["score"]) <= 1e-3 and answer["anomalous"] == want["anomalous"]
        assert Image.open(answer["map"]).size == Image.open(answer["image"]).size
    assert answers[0]["anomalous"] and not answers[1]["anomalous"]
    assert len({a["map"] for a in answers}) == 3
