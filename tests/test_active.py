"""What to label next, on a real run (embedded EfficientNet-Lite0, head on 4 × 8 sample images) and a pool of
real unlabelled Fashion-MNIST test images: every suggestion comes from the pool, labelled images join a new
dataset version, and the pick is uncertain and diverse."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from apptest_support import open_page
from tl_core.quality.active import add_labelled, suggest, weighted_k_center
from tl_core.data.datasets import load_dataset
from tl_core.data.datasets.unlabelled import ingest_unlabelled_folder
from tl_core.ops.runs import read_config, read_metrics


@pytest.fixture
def pool_dir(fashion_test_dir, small_sample, tmp_path) -> Path:
    """40 test images of the run's 4 classes, loose, and 2 images the run already trained on."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for name in ("Trouser", "Bag", "Sneaker", "Dress"):
        for image in sorted((fashion_test_dir / name).iterdir()):
            shutil.copy(image, pool / f"{name}-{image.name}")
    for image in sorted((small_sample / "Bag").iterdir())[:2]:
        shutil.copy(image, pool / f"known-{image.name}")
    return pool


def test_every_suggestion_comes_from_the_unlabelled_pool(head_run, pool_dir):
    pool = ingest_unlabelled_folder(pool_dir)
    result = suggest(head_run, pool, k=6)
    suggestions = result["suggestions"]
    pool_paths = {str(path) for path in pool.paths()}
    trained = {item["sha256"] for item in load_dataset(read_config(head_run).dataset_dir).items}
    sha_of = {str(path): item["sha256"] for path, item in zip(pool.paths(), pool.items)}
    assert len(suggestions) == 6 and [s["rank"] for s in suggestions] == list(range(1, 7))
    assert all(s["path"] in pool_paths for s in suggestions)
    assert len({s["path"] for s in suggestions}) == 6
    assert not any(sha_of[s["path"]] in trained for s in suggestions)
    assert (result["candidates"], result["already_labelled"]) == (40, 2)
    assert all(s["guess"] in read_metrics(head_run)["classes"] and 0 < s["prob"] <= 1 for s in suggestions)
    uncertain = suggest(head_run, pool, k=6, choice="uncertain")["suggestions"]
    assert [s["uncertainty"] for s in uncertain] == sorted((s["uncertainty"] for s in uncertain), reverse=True)
    assert uncertain[0]["uncertainty"] >= max(s["uncertainty"] for s in suggestions)


def test_suggest_command_prints_json(head_run, pool_dir, capsys):
    from tl_core.__main__ import main as cli

    assert cli(["suggest", str(head_run), "--pool", str(pool_dir), "-k", "3", "--by", "entropy"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["suggestions"]) == 3 and "entropy" in printed["words"]


def test_labelled_suggestions_join_a_new_version_and_the_old_one_stays(head_run, pool_dir):
    pool = ingest_unlabelled_folder(pool_dir)
    picks = suggest(head_run, pool, k=2)["suggestions"]
    old_root = read_config(head_run).dataset_dir
    old = load_dataset(old_root)
    version = add_labelled(old_root, [(picks[0]["path"], "Trouser"), (picks[1]["path"], picks[1]["guess"])])
    assert version.parent == old.id and len(version.items) == len(old.items) + 2
    assert len(load_dataset(old_root).items) == len(old.items) and all(p.exists() for p in old.paths())
    added = [change for change in version.changes if change["action"] == "add"]
    assert [(c["source"], c["label"]) for c in added] == [(picks[0]["path"], "Trouser"),
                                                          (picks[1]["path"], picks[1]["guess"])]
    assert all((version.root / c["path"]).read_bytes() == Path(c["source"]).read_bytes() for c in added)


def test_weighted_k_center_takes_one_of_two_copies_and_stays_in_range():
    features = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [-4.0, 3.0]])
    uncertainty = torch.tensor([1.0, 1.0, 0.5, 0.2, 0.4])
    picks = weighted_k_center(features, uncertainty, 3)
    assert picks[0] == 0 and 1 not in picks[:3] and len(set(picks)) == 3
    assert sorted(weighted_k_center(features, uncertainty, 10)) == [0, 1, 2, 3, 4]
    covered = torch.tensor([[0.1, 0.0], [5.0, 5.0]])  # the labelled images sit near rows 0, 1 and 2
    assert weighted_k_center(features, uncertainty, 1, covered) == [4]


@pytest.mark.usefixtures("navigation_pages")
def test_results_page_suggests_pool_images_and_adds_the_confirmed_ones(head_run, pool_dir, _workspace, fake_jobs):
    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    ingest_unlabelled_folder(pool_dir)
    at = open_page("pages/5_Results.py")
    at.button(key="label_next_start").click().run()
    assert not at.exception and not at.error
    boxes = [box for box in at.selectbox if str(box.key).startswith("label_next::")]
    assert len(boxes) == 20 and all(box.value in read_metrics(run_dir)["classes"] for box in boxes)
    confirmed = [boxes[0].value, boxes[1].value]  # the model's guesses, kept as they are
    for box in boxes[2:]:
        box.set_value("(skip)")
    at.run()
    assert "Add these 2 labelled images" in at.button(key="label_next_add").label
    at.button(key="label_next_add").click().run()
    assert not at.exception and not at.error
    version = load_dataset(at.session_state["dataset_dir"])
    assert [c["label"] for c in version.changes] == confirmed
    at.button(key="labelled_run_start").click().run()
    assert fake_jobs[-1].submitted[-1].dataset_dir == str(version.root)
