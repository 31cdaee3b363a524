"""Multi-task and multi-label data from a labels table: the ingest's messages, one model with a head per task,
its thresholds used by predict and export, and the whole run-folder contract."""
import csv
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tl_core.ops import runs
from tl_core.config import RunConfig
from tl_core.data.datasets import DatasetError, load_dataset
from tl_core.data.datasets.labels_table import ingest_labelled_folder, ingest_labelled_zip
from tl_core.data.sample_data import FASHION_GROUPS, FASHION_TAGS, write_fashion_task_table


@pytest.fixture
def labelled(small_sample, tmp_path) -> Path:
    """small_sample (4 classes × 8) with labels.csv: category, group (bag/bottom/dress/footwear) and tags."""
    dest = tmp_path / "data"
    shutil.copytree(small_sample, dest)
    write_fashion_task_table(dest)
    return dest


def _rows(table: Path) -> list[list[str]]:
    return list(csv.reader(table.open()))


def _write(table: Path, rows: list[list[str]]) -> None:
    with table.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_a_faulty_table_gets_a_message_per_row_and_the_rest_is_kept(labelled):
    table = labelled / "labels.csv"
    rows = _rows(table)
    header, body = rows[0], rows[1:]
    unlisted_image = body[0][0]
    body[0][0] = "Bag/not_there.png"  # a missing file (and the image the row named is now in no row)
    body[1][2] = ""  # an empty label for "group"
    duplicate = list(body[2])
    duplicate[1] = "Dress"  # listed again, with another label
    _write(table, [header, *body, duplicate])
    dataset = ingest_labelled_folder(labelled, table)
    reasons = {r["name"]: r["reason"] for r in dataset.refused}
    assert any("not_there.png" in name and "is not in data/" in reason for name, reason in reasons.items())
    assert any(f"lists {duplicate[0]} again; row 4 is kept" == reason for reason in reasons.values())
    unlisted = [r for r in dataset.refused if r["reason"].startswith("not listed in labels.csv")]
    assert [r["name"] for r in unlisted] == [unlisted_image]
    assert len(dataset.items) == len(body) - 1  # every other row's image is kept, once
    assert dataset.notes == ["1 image without a label for 'group': they train the other tasks only"]
    kept = [item["tasks"]["category"] for item in dataset.items if item["path"].endswith(Path(duplicate[0]).name)]
    assert kept == [body[2][1]] and body[2][1] != "Dress"  # the first row's label, not the duplicate's
    without_group = [item for item in dataset.items if "group" not in item["tasks"]]
    assert len(without_group) == 1


def test_an_unknown_column_names_the_columns_there_are(labelled):
    with pytest.raises(DatasetError, match=r"no column named 'colour'; its columns are 'category', 'group', 'tags'"):
        ingest_labelled_folder(labelled, labelled / "labels.csv", tasks=["category", "colour"])


def test_tasks_and_their_kinds_come_from_the_header(labelled):
    dataset = ingest_labelled_folder(labelled, labelled / "labels.csv")
    assert [(t["name"], t["kind"]) for t in dataset.tasks] == [
        ("category", "single-label"), ("group", "single-label"), ("tags", "multi-label")]
    tags = sorted({tag for name in ("Trouser", "Bag", "Sneaker", "Dress") for tag in FASHION_TAGS[name]})
    assert dataset.tasks[2]["classes"] == tags
    reloaded = load_dataset(dataset.root)
    assert reloaded.tasks == dataset.tasks and len(reloaded.items) == 32
    assert all(item["tasks"]["group"] == FASHION_GROUPS[item["tasks"]["category"]] for item in reloaded.items)


def test_a_zip_with_a_table_inside_is_ingested_and_a_traversal_member_never_lands(labelled, _workspace):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(labelled.rglob("*")):
            if path.is_file():
                archive.write(path, f"shop/{path.relative_to(labelled)}")
        archive.writestr("../evil.png", b"not an image")
    dataset = ingest_labelled_zip(buffer.getvalue(), name="shop")
    assert len(dataset.items) == 32 and dataset.tasks[0]["name"] == "category"
    assert not (_workspace.parent / "evil.png").exists()


@pytest.fixture
def multitask_run(labelled, _workspace):
    from tl_core.__main__ import main as cli

    run_dir = _workspace / "runs" / "multi"
    assert cli(["train", "--data", str(labelled), "--labels", "labels.csv", "--freeze", "head", "--features", "last",
                "--epochs", "3", "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_a_multitask_run_writes_the_whole_run_folder_contract(multitask_run):
    folder = runs.RunFolder(multitask_run)
    for path in (folder.config, folder.status, folder.events, folder.metrics, folder.predictions, folder.weights,
                 folder.labels, folder.preprocess):
        assert path.is_file(), path.name
    assert runs.read_status(multitask_run)["state"] == "done" and not runs.damage(multitask_run)
    events = runs.read_events(multitask_run)
    kinds = [e["event"] for e in events]
    assert kinds.count("fit_start") == 1 and kinds[-1] == "fit_end"
    epochs = [e for e in events if e["event"] == "epoch_end"]
    assert set(epochs[0]["tasks"]) == {"category", "group", "tags"}
    metrics = runs.read_metrics(multitask_run)
    tasks = metrics["tasks"]
    assert tasks["category"]["score_name"] == "accuracy" and len(tasks["category"]["confusion"]) == 4
    assert tasks["tags"]["score_name"] == "mAP" and set(tasks["tags"]["per_tag"]) >= {"feet", "carried"}
    scores = [t["score"] for t in tasks.values()]
    assert metrics["val_acc"] == pytest.approx(sum(scores) / 3)
    rows = list(csv.DictReader(folder.predictions.open()))
    assert len(rows) == 3 * metrics["n_val"] and {r["task"] for r in rows} == {"category", "group", "tags"}
    # the heads learnt: the group of a bag, a trouser, a sneaker and a dress is far above chance (1/4)
    assert tasks["group"]["accuracy"] > 0.5


def test_thresholds_are_saved_and_used_by_predict_and_the_exported_bundle(multitask_run, labelled):
    from tl_core.use.export import export_run
    from tl_core.use.predict import Predictor

    labels = json.loads(runs.RunFolder(multitask_run).labels.read_text())
    tags = next(t for t in labels["tasks"] if t["name"] == "tags")
    assert len(tags["thresholds"]) == len(tags["classes"]) and all(0 < t < 1 for t in tags["thresholds"])
    predictor = Predictor(multitask_run)
    images = sorted(str(p) for p in labelled.glob("*/*.png"))[:6]
    results = predictor.predict_files(images)
    probs = predictor.predict_images([__import__("PIL.Image", fromlist=["Image"]).open(p) for p in images])
    for result, p in zip(results, probs):
        answer = result["tasks"]["tags"]
        expected = {c for k, c in enumerate(tags["classes"]) if p[tags["offset"] + k] >= tags["thresholds"][k]}
        assert {t["label"] for t in answer["tags"]} == expected
        category = p[:4]
        assert result["tasks"]["category"]["top"][0]["label"] == labels["tasks"][0]["classes"][int(category.argmax())]
        assert float(category.sum()) == pytest.approx(1, abs=1e-5)  # a softmax within the task, not across tasks
    report = export_run(multitask_run, "onnx")
    assert report["verified"]
    bundle = Path(report["bundle"])
    assert json.loads((bundle / "labels.json").read_text())["tasks"] == labels["tasks"]
    done = subprocess.run([sys.executable, str(bundle / "predict_example.py"), images[0]], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "category: " in done.stdout and "group: " in done.stdout and "tags: " in done.stdout


def test_evaluate_with_a_table_prints_per_task_metrics(multitask_run, labelled, capsys):
    from tl_core.__main__ import main as cli

    assert cli(["evaluate", str(multitask_run), "--data", str(labelled), "--labels", "labels.csv"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 32 and set(report["tasks"]) == {"category", "group", "tags"}
    assert report["tasks"]["category"]["n"] == 32


def test_fine_tuning_trains_every_head_and_the_shared_layers_jointly(labelled, _workspace):
    from tl_core.data.datasets.labels_table import ingest_labelled_folder
    from tl_core.worker import run

    dataset = ingest_labelled_folder(labelled, labelled / "labels.csv")
    run_dir = runs.create_run(RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet", weights="none",
                                        freeze="all", epochs=2, batch_size=8, image_size=64, features="last",
                                        task_weights={"tags": 0.5}))
    metrics = run(run_dir)
    events = runs.read_events(run_dir)
    tuned = [e for e in events if e["event"] == "epoch_end" and e["phase"] == "finetune"]
    assert len(tuned) == 2 and all(0 <= e["train_acc"] <= 1 and e["train_loss"] > 0 for e in tuned)
    assert metrics["task_weights"] == {"category": 1.0, "group": 1.0, "tags": 0.5}
    assert metrics["trainable_params"] == metrics["total_params"]


def test_the_task_figure_draws_each_task_from_the_events(multitask_run):
    from tl_core import plots

    figure = plots.task_figure(runs.read_events(multitask_run))
    assert [trace.name for trace in figure.data] == ["category", "group", "tags"]
    assert all(len(trace.x) == 3 for trace in figure.data)  # one point a probe epoch
