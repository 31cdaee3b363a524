"""What a finished run shows, on a real one (embedded EfficientNet-Lite0, head trained on 4 × 8 images):
confusion cells and mistakes from predictions.csv, calibration, and the Results, Predict and Export pages."""
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from apptest_support import open_page, plain
from pages.ui import models, widgets
from tl_core.fit import metrics as evaluate
from tl_core.ops import runs
from tl_core.ops.storage import atomic_write_json

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


@pytest.fixture(scope="module")
def trained(head_run) -> Path:
    return head_run


@pytest.fixture
def run_dir(trained, _workspace) -> Path:
    """The trained run, copied into this test's workspace (the pages list the workspace's runs)."""
    return Path(shutil.copytree(trained, _workspace / "runs" / trained.name))


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- engine: predictions.csv sliced
def test_each_cell_holds_exactly_its_rows_and_the_confusion_count(trained):
    predictions, rows = evaluate.read_predictions(trained), csv_rows(trained)
    metrics = runs.read_metrics(trained)
    assert len(predictions) == len(rows) == metrics["n_val"] == 32
    assert sum(row[j] for i, row in enumerate(metrics["confusion"]) for j in range(len(row)) if i != j) > 0
    for i, true in enumerate(metrics["classes"]):
        for j, predicted in enumerate(metrics["classes"]):
            in_cell = evaluate.cell(predictions, true, predicted)
            expected = [row for row in rows if row["label"] == true and row["predicted"] == predicted]
            assert sorted(row["path"] for row in in_cell) == sorted(row["path"] for row in expected)
            assert len(in_cell) == metrics["confusion"][i][j]
            confidences = [row["confidence"] for row in in_cell]
            assert confidences == sorted(confidences, reverse=True)
            assert all(row["correct"] == (i == j) for row in in_cell)


def test_most_confidently_wrong_is_every_mistake_surest_first(trained):
    predictions = evaluate.read_predictions(trained)
    wrong = evaluate.most_confidently_wrong(predictions, n=None)
    assert len(wrong) == sum(not row["correct"] for row in predictions) > 0
    assert all(row["label"] != row["predicted"] for row in wrong)
    assert [row["confidence"] for row in wrong] == sorted((row["confidence"] for row in wrong), reverse=True)
    assert evaluate.most_confidently_wrong(predictions, n=3) == wrong[:3]
    true, predicted = evaluate.most_confused_pair(runs.read_metrics(trained))
    biggest = max(len(evaluate.cell(predictions, t, p)) for t in {r["label"] for r in predictions}
                  for p in {r["label"] for r in predictions} if t != p)
    assert len(evaluate.cell(predictions, true, predicted)) == biggest


def test_calibration_counts_every_prediction_once(trained):
    calibration = evaluate.run_calibration(trained)
    predictions = evaluate.read_predictions(trained)
    assert sum(row["count"] for row in calibration["table"]) == calibration["count"] == len(predictions)
    assert calibration["accuracy"] == pytest.approx(runs.read_metrics(trained)["val_acc"])
    assert 0 <= calibration["ece"] <= 1
    assert calibration["text"].startswith(f"Expected calibration error {calibration['ece']:.1%}")
    assert evaluate.run_calibration(trained.parent / "no such run")["count"] == 0


# ---------------------------------------------------------------- 5 Results
def shown_captions(image) -> list[str]:
    """The captions as a visitor reads them (the page escapes names for markdown)."""
    return [plain(caption) for caption in image.captions]


def cell_captions(run_dir: Path, true: str, predicted: str) -> list[str]:
    return [f"{Path(row['path']).name} ({row['confidence']:.0%})"
            for row in evaluate.cell(evaluate.read_predictions(run_dir), true, predicted)]


def test_choosing_a_cell_shows_exactly_its_images(run_dir):
    metrics = runs.read_metrics(run_dir)
    at = open_page("pages/5_Results.py")
    true, predicted = evaluate.most_confused_pair(metrics)
    assert (at.selectbox(key="cell_true").value, at.selectbox(key="cell_predicted").value) == (true, predicted)
    assert shown_captions(at.image[0]) == cell_captions(run_dir, true, predicted)
    for i, true in enumerate(metrics["classes"]):
        at.selectbox(key="cell_true").set_value(true)
        for j, predicted in enumerate(metrics["classes"]):
            at.selectbox(key="cell_predicted").set_value(predicted).run()
            assert not at.exception
            captions = cell_captions(run_dir, true, predicted)
            assert len(captions) == metrics["confusion"][i][j]
            if captions:
                assert shown_captions(at.image[0]) == captions
            else:
                assert any(f"No validation image of {true} was predicted as {predicted}" in plain(info.value)
                           for info in at.info)


def test_results_show_the_surest_mistakes_calibration_and_validation_in_words(run_dir):
    at = open_page("pages/5_Results.py")
    wrong = evaluate.most_confidently_wrong(evaluate.read_predictions(run_dir), n=None)
    assert shown_captions(at.image[-1]) == [f"{r['label']} → {r['predicted']} ({r['confidence']:.0%})" for r in wrong]
    charts = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert charts[:2] == ["Confusion matrix", "Reliability: is it right as often as it is sure?"]
    calibration = evaluate.run_calibration(run_dir)
    assert any(markdown.value == calibration["text"] for markdown in at.markdown)
    validation = runs.read_metrics(run_dir)["validation"]
    assert "cross-validation" in validation
    assert any(f"Validated by {validation}" in caption.value for caption in at.caption)
    assert at.dataframe[0].value["class"].tolist() == runs.read_metrics(run_dir)["classes"]


def test_heat_maps_replace_the_error_images(run_dir):
    at = open_page("pages/5_Results.py")
    before = shown_captions(at.image[-1])
    at.toggle(key="results_heatmaps").set_value(True).run()
    assert not at.exception
    wrong = evaluate.most_confidently_wrong(evaluate.read_predictions(run_dir), n=None)
    expected = []
    for row, caption in zip(wrong, before):
        explained = models.explanation(str(run_dir), row["path"])  # cached when the page computed it
        assert explained["overlay"].size == widgets.thumbnail(row["path"], 1000).size
        # A head-only run is cross-validated: the final model, fitted on every image, may answer differently.
        note = f" · final model: {explained['class']} ({explained['prob']:.0%})"
        expected.append(caption + (note if explained["class"] != row["predicted"] else ""))
    assert shown_captions(at.image[-1]) == expected
    assert any("cross-validated" in caption.value for caption in at.caption)


def test_compare_with_scratch_queues_a_baseline_then_shows_the_verdict(run_dir, fake_jobs):
    at = open_page("pages/5_Results.py")
    at.button(key="start_baseline").click().run()
    assert not at.exception and not at.error
    config = fake_jobs[-1].submitted[-1]
    assert (config.weights, config.freeze, config.parent_run) == ("none", "all", run_dir.name)
    baseline = Path(at.session_state["run_dir"])
    assert any("is queued" in info.value for info in at.info)
    assert any(link.value == "Watch it on the Train page" for link in at.page_link)

    metrics = runs.read_metrics(run_dir)
    atomic_write_json(baseline / "metrics.json", {**metrics, "val_acc": metrics["val_acc"] - 0.3})
    runs.write_status(baseline, state="done")
    at.session_state["results_run"] = str(run_dir)
    at.run()
    assert any(s.value.startswith("Transfer helped") for s in at.success)


# ---------------------------------------------------------------- 6 Predict, 7 Export
def test_predict_shows_the_top_class_with_a_heat_map_and_names_a_refused_file(run_dir):
    row = next(r for r in evaluate.read_predictions(run_dir) if r["correct"])
    at = open_page("pages/6_Predict.py")
    assert at.selectbox(key="predict_run").value == str(run_dir)
    at.file_uploader(key="predict_uploads").set_value([
        ("shoe.png", Path(row["path"]).read_bytes(), "image/png"),
        ("notes.txt", b"not a picture", "text/plain")]).run()
    assert not at.exception and not at.error
    top = models.predictor(str(run_dir)).predict_files([row["path"]], top_k=3)[0]["top"]
    assert plain(at.subheader[0].value) == f"shoe.png: {top[0]['label']} ({top[0]['prob']:.0%})"
    bars = [plain(bar.proto.text) for bar in at.get("progress")]
    assert bars == [f"{k + 1}. {t['label']}: {t['prob']:.1%}" for k, t in enumerate(top)]
    assert [shown_captions(image) for image in at.image] == [["the image"],
                                                              [f"where it looked to say {top[0]['label']}"]]
    assert [plain(w.value) for w in at.warning] == ["notes.txt: not an image (text file); skipped."]

    from PIL import Image
    photo = io.BytesIO()
    Image.open(row["path"]).convert("RGB").resize((120, 90)).save(photo, "JPEG")
    at.camera_input(key="predict_camera").set_value(("webcam.jpg", photo.getvalue(), "image/jpeg")).run()
    assert not at.exception
    # two pictures: first the table of both (pages/ui/batch_predict.py), then each one with its heat map
    assert [plain(header.value).split(":")[0] for header in at.subheader] == ["2 pictures", "shoe.png", "webcam.jpg"]


def test_export_page_makes_a_verified_safetensors_bundle_to_download(run_dir):
    at = open_page("pages/7_Export.py")
    at.radio(key="export_format").set_value("safetensors").run()
    at.button(key="export_start").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Verified")
    shown = {metric.label: metric.value for metric in at.metric}
    assert shown["Images checked"] == "32" and shown["Top-1 agreement"] == "100.0%"
    assert float(shown["Largest probability difference"]) <= 1e-3
    assert at.download_button(key="export_download").proto.label == "Download the safetensors bundle (zip)"
    assert (run_dir / "export" / "safetensors.zip").exists()
    assert any(code.value.startswith("# Model card") for code in at.code)  # shown as text, never as markdown
