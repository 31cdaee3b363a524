"""Likely label errors on a real run (embedded EfficientNet-Lite0, head only, 4 × 8 sample images, one Trouser
filed under Bag), dataset versions that leave the old one readable, and the Results page that acts on both."""
import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from apptest_support import open_page, plain
from tl_core.quality import label_errors
from tl_core.data.datasets import DatasetError, describe_changes, ingest_folder, load_dataset, new_version
from tl_core.ops.runs import RunFolder, read_config, read_metrics

FLIPPED = "flipped_trouser.png"


@pytest.fixture(scope="module")
def flipped_run(small_sample, tmp_path_factory) -> Path:
    """A finished head-only run on small_sample with one Trouser image given the label Bag."""
    from tl_core.__main__ import main as cli

    root = tmp_path_factory.mktemp("flipped")
    data = Path(shutil.copytree(small_sample, root / "data"))
    trouser = sorted((data / "Trouser").iterdir())[0]
    trouser.rename(data / "Bag" / FLIPPED)
    run_dir = root / "workspace" / "runs" / "20260101-000000-efficientnet_lite0-flip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(root / "workspace"))
        assert cli(["train", "--data", str(data), "--freeze", "head", "--epochs", "2", "--features", "last",
                    "--image-size", "96", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_a_flipped_label_is_flagged_first(flipped_run):
    report = label_errors.suspects(flipped_run)
    assert report["judged"] == 32 and "all 32 images judged" in report["scope"]
    first = report["suspects"][0]
    assert Path(first["path"]).name == FLIPPED
    assert (first["label"], first["suggested"]) == ("Bag", "Trouser")
    assert first["suggested_prob"] > 0.5 and first["score"] == pytest.approx(1 - first["label_prob"])
    ranked = label_errors.judge(flipped_run)["images"]
    assert len(ranked) == 32 and Path(ranked[0]["path"]).name == FLIPPED
    assert [image["label_prob"] for image in ranked] == sorted(image["label_prob"] for image in ranked)
    assert sum(image["flagged"] for image in ranked) == len(report["suspects"])


def test_the_run_keeps_every_class_probability_of_each_validation_image(flipped_run):
    probs = np.load(RunFolder(flipped_run).val_probs)
    with open(RunFolder(flipped_run).predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = read_metrics(flipped_run)["classes"]
    assert probs.shape == (len(rows), len(classes)) == (32, 4)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [classes[k] for k in probs.argmax(1)] == [row["predicted"] for row in rows]
    assert np.allclose(probs.max(1), [float(row["confidence"]) for row in rows], atol=1e-5)


def test_suspects_command_prints_json(flipped_run, capsys):
    from tl_core.__main__ import main as cli

    assert cli(["suspects", str(flipped_run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["suspects"][0]["path"]).name == FLIPPED
    assert cli(["suspects", str(flipped_run), "--all"]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"]) == 32


def test_a_held_out_run_judges_only_its_held_out_images(small_sample, tmp_path, monkeypatch):
    from tl_core.__main__ import main as cli
    from tl_core.fit.loop import Fit

    # Untrained weights never beat the probe, and a kept probe is refitted out of fold on every image (the next
    # test); this run keeps its held-out split, as a fine-tune that beat its probe does.
    monkeypatch.setattr(Fit, "refits_kept_probe", False)
    run_dir = tmp_path / "held_out"
    assert cli(["train", "--data", str(small_sample), "--backbone", "test_efficientnet", "--weights", "none",
                "--freeze", "top-1", "--epochs", "1", "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    metrics = read_metrics(run_dir)
    report = label_errors.judge(run_dir)
    assert report["judged"] == metrics["n_val"] == 8
    assert report["scope"].startswith("only the 8 held-out images judged")
    with open(RunFolder(run_dir).predictions, newline="") as f:
        assert [image["path"] for image in report["images"]] != [] and \
            {image["path"] for image in report["images"]} == {row["path"] for row in csv.DictReader(f)}


def test_a_fine_tune_that_kept_its_probe_judges_every_image_out_of_fold(small_sample, tmp_path):
    from tl_core.__main__ import main as cli

    run_dir = tmp_path / "kept_probe"
    assert cli(["train", "--data", str(small_sample), "--backbone", "test_efficientnet", "--weights", "none",
                "--freeze", "top-1", "--epochs", "1", "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    metrics = read_metrics(run_dir)
    assert metrics["kept"]["phase"] == "probe"
    report = label_errors.judge(run_dir)
    assert report["judged"] == metrics["n_val"] == 32
    assert report["scope"] == "all 32 images judged, each by a head fitted without it (cross-validation)"


def test_fixing_labels_makes_a_new_version_and_leaves_the_old_one_readable(flipped_run):
    old_root = Path(read_config(flipped_run).dataset_dir)
    before = (old_root / "manifest.json").read_text()
    first, second = label_errors.suspects(flipped_run)["suspects"][:2]
    made = label_errors.fix_labels(flipped_run, relabel={first["path"]: first["suggested"]}, drop=[second["path"]])
    version = made["dataset_dir"]
    old = load_dataset(old_root)
    assert (old_root / "manifest.json").read_text() == before and all(path.exists() for path in old.paths())
    assert version.id != old.id and version.parent == old.id and load_dataset(version.root).parent == old.id
    assert len(version.items) == len(old.items) - 1
    moved = next(item for item in version.items if Path(item["path"]).name == FLIPPED)
    assert moved["label"] == "Trouser" and moved["path"].startswith("images/Trouser/")
    assert (version.root / moved["path"]).read_bytes() == Path(first["path"]).read_bytes()
    dropped = hashlib.sha256(Path(second["path"]).read_bytes()).hexdigest()
    assert dropped not in {item["sha256"] for item in version.items}
    assert describe_changes(version.changes) == "1 relabelled, 1 dropped"
    assert {change["action"] for change in version.changes} == {"relabel", "drop"}
    config = label_errors.retrain_config(flipped_run, version.root)
    assert config.dataset_dir == str(version.root) and config.freeze == read_config(flipped_run).freeze
    assert config.parent_run is None and config.extra == {"retrained_from": flipped_run.name}


def test_versions_refuse_unknown_images_empty_changes_and_contradictions(sample_dir):
    dataset = ingest_folder(sample_dir)
    path = dataset.items[0]["path"]
    with pytest.raises(DatasetError, match="images/none.png: not an image of the dataset"):
        new_version(dataset, drop=["images/none.png"])
    with pytest.raises(DatasetError, match="no changes"):
        new_version(dataset, relabel={path: dataset.items[0]["label"]})
    with pytest.raises(DatasetError, match="both relabelled and dropped"):
        new_version(dataset, relabel={path: "Bag"}, drop=[path])
    with pytest.raises(DatasetError, match="not an image"):
        new_version(dataset, add=[(sample_dir.parent.parent.parent / "README.md", "Bag")])
    version = new_version(dataset, relabel={str(dataset.root / path): "A new class"})
    assert "A new class" in version.classes and version.name == f"{dataset.name} v2"
    assert new_version(version, drop=[version.items[0]["path"]]).name == f"{dataset.name} v3"


# ---------------------------------------------------------------- the Results page
@pytest.mark.usefixtures("navigation_pages")
def test_results_page_relabels_a_suspect_into_a_new_version_and_queues_a_run_on_it(flipped_run, _workspace,
                                                                                   fake_jobs):
    run_dir = Path(shutil.copytree(flipped_run, _workspace / "runs" / flipped_run.name))
    at = open_page("pages/5_Results.py")
    shown = [plain(markdown.value) for markdown in at.markdown]
    assert not any("looks like" in text for text in shown)  # the gallery opens on request
    at.toggle(key="review_suspects").set_value(True).run()
    shown = [plain(markdown.value) for markdown in at.markdown]
    first = label_errors.suspects(run_dir)["suspects"][0]
    assert any(text.startswith(f"labelled *Bag*, looks like *Trouser* ({first['suggested_prob']:.0%})")
               for text in shown)
    assert at.button(key="suspects_apply").disabled
    at.radio(key=f"suspect::{first['path']}").set_value("relabel").run()
    at.button(key="suspects_apply").click().run()
    assert not at.exception and not at.error
    assert any("1 relabelled" in plain(success.value) for success in at.success)
    new_root = Path(at.session_state["dataset_dir"])
    assert load_dataset(new_root).parent == load_dataset(read_config(run_dir).dataset_dir).id
    at.button(key="cleaned_run_start").click().run()
    assert not at.exception
    assert fake_jobs[-1].submitted[-1].dataset_dir == str(new_root)
    assert any(link.value == "The new run is queued: watch it" for link in at.page_link)


@pytest.mark.usefixtures("navigation_pages", "fake_jobs")
def test_suspects_with_hostile_class_names_are_shown_as_text(_workspace):
    from test_hostile_names import HOSTILE, MARKDOWN_LINK, assert_no_link_from_names, hostile_run

    from tl_core.data.datasets import ingest_files
    from tl_core.data.sample_data import SAMPLE_DIR

    pngs = sorted((SAMPLE_DIR / "Bag").glob("*.png"))
    dataset = ingest_files([(f"{HOSTILE[k]}{i}.png", pngs[k * 4 + i].read_bytes(), HOSTILE[k])
                            for k in range(3) for i in range(4)], name=HOSTILE[0])
    run_dir = hostile_run(dataset, HOSTILE[3])
    with open(RunFolder(run_dir).predictions, newline="") as f:
        labels = [dataset.classes.index(row["label"]) for row in csv.DictReader(f)]
    probs = np.full((len(labels), 3), 0.05)
    probs[np.arange(len(labels)), labels] = 0.9
    probs[0] = [0.02, 0.02, 0.02]
    probs[0, (labels[0] + 1) % 3] = 0.96  # one image the model is sure belongs to the next class
    np.save(RunFolder(run_dir).val_probs, probs)
    metrics = read_metrics(run_dir)
    metrics.update(n_val=len(labels), validation="5-fold cross-validation (out-of-fold predictions)",
                   validation_method={"kind": "cv", "folds": 5})
    (RunFolder(run_dir).metrics).write_text(json.dumps(metrics))
    assert label_errors.suspects(run_dir)["suspects"][0]["path"] == str(dataset.paths()[0])
    at = open_page("pages/5_Results.py", results_run=str(run_dir))
    at.toggle(key="review_suspects").set_value(True).run()
    texts = assert_no_link_from_names(at)
    suggested = dataset.classes[(labels[0] + 1) % 3]
    assert any(" ".join(f"looks like *{suggested}*".split()) in text for text in texts)
    radio = at.radio(key=f"suspect::{dataset.paths()[0]}")
    assert not MARKDOWN_LINK.search(radio.options[1])
    assert plain(radio.options[1]) == " ".join(f"Relabel to {suggested}".split())
