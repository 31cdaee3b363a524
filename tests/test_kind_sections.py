"""The app's task-kind seam: a kind registered with tl_core.kinds is offered on the Data page, and its app
module's sections replace the step pages' classifier bodies, through pages.ui.kinds alone.

The kind is tests/kind_tally.py ("tally": each image's size); pages.ui.kinds is pointed at it as the app
module pages/ui/kind_tally.py would be. Training is not run: the fake job manager records what Start submits,
and the run folder is written by hand as the worker would write it.
"""
import json
import shutil
import time
from pathlib import Path

import pytest

import kind_tally
from apptest_support import open_page, plain
from pages.ui import kinds as app_kinds
from tl_core import kinds
from tl_core.models import backbones
from tl_core.ops import runs
from tl_core.ops import spaces
from tl_core.config import RunConfig
from tl_core.data.sample_data import SAMPLE_DIR

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs", "tally")


@pytest.fixture
def tally(monkeypatch):
    """The tally kind registered with the engine, and its sections found where pages/ui/kind_tally.py would be."""
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))  # registered for this test only
    kinds.register(kind_tally.KIND)
    module_name = app_kinds.module_name
    monkeypatch.setattr(app_kinds, "module_name",
                        lambda name: "kind_tally" if name == kind_tally.NAME else module_name(name))


@pytest.fixture
def pictures(tmp_path) -> Path:
    folder = tmp_path / "workspace" / "datasets" / "pictures"
    folder.mkdir(parents=True)
    for path in sorted((SAMPLE_DIR / "Bag").glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    return folder


def tally_run(folder: Path, state: str) -> Path:
    """A tally run after two epochs, its val_tally per epoch in the event log; done: with metrics and weights."""
    run_dir = runs.create_run(RunConfig(task="tally", dataset_dir=str(folder), backbone=backbones.EMBEDDED_MODEL,
                                        epochs=2))
    folder_files = runs.RunFolder(run_dir)
    events = [{"t": time.time(), "event": "fit_start", "epochs": 2}] + [
        {"t": time.time(), "event": "epoch_end", "epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch,
         "val_tally": 3.0 + epoch} for epoch in (1, 2)]
    folder_files.events.write_text("".join(json.dumps(event) + "\n" for event in events))
    if state == "done":
        folder_files.metrics.write_text(json.dumps({"val_tally": 5.0, "best_epoch": 2, "wall_s": 1.5}))
        folder_files.weights.write_bytes(b"")  # the kind's model file, as far as the run listing asks
    runs.write_status(run_dir, state=state, pid=None, started=time.time())
    return run_dir


def test_the_data_page_offers_the_kinds_and_draws_the_chosen_ones_section(pictures):
    at = open_page("pages/2_Data.py")
    choice = at.radio(key="task")
    assert choice.options[0] == "Classify images" and "Tally images" in choice.options
    assert choice.value == "classify" and "use_sample" in [button.key for button in at.button]

    choice.set_value("tally").run()
    assert not at.exception
    assert "use_sample" not in [button.key for button in at.button]  # the classifier's body is not drawn
    at.text_input(key="tally_folder").set_value(str(pictures)).run()
    at.button(key="tally_use").click().run()
    assert not at.exception
    assert at.session_state["dataset_dir"] == str(pictures)
    assert any(text.value == "tally data: pictures" for text in at.text)
    assert spaces.Space.laptop().load_state()["task"] == "tally"  # saved with the session's choices
    assert "Task: Tally images" in plain(" ".join(markdown.value for markdown in at.sidebar.markdown))

    at.radio(key="task").set_value("classify").run()  # back: the tally folder is no classifier's dataset
    assert at.session_state["dataset_dir"] is None and "use_sample" in [button.key for button in at.button]


def test_the_train_page_submits_a_run_of_the_chosen_kind(pictures, fake_jobs):
    at = open_page("pages/4_Train.py", task="tally", dataset_dir=str(pictures), freeze="head")
    assert any("pictures" in plain(markdown.value) for markdown in at.markdown)
    assert "class_weights" not in [radio.key for radio in at.radio]  # a classifier's option: no classes here
    at.button(key="start_training").click().run()
    assert not at.exception
    config = fake_jobs[-1].submitted[-1]
    assert config.task == "tally" and config.dataset_dir == str(pictures)


def test_a_running_run_of_the_kind_plots_its_headline_metric_per_epoch(pictures):
    run_dir = tally_run(pictures, "running")
    at = open_page("pages/4_Train.py", task="tally", dataset_dir=str(pictures), run_dir=str(run_dir))
    assert not at.exception
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    tally_chart = [spec for spec in specs if spec["data"][0].get("name") == "val_tally"]
    assert tally_chart and tally_chart[0]["data"][0]["y"] == [4.0, 5.0]
    assert len(specs) == 2  # loss, and the kind's metric; no empty accuracy chart
    assert any(text.value == f"tally train section: {run_dir.name}" for text in at.text)


def test_a_finished_run_of_the_kind_shows_its_own_results_predict_and_export(pictures):
    run_dir = tally_run(pictures, "done")
    at = open_page("pages/4_Train.py", task="tally", dataset_dir=str(pictures), run_dir=str(run_dir))
    assert any("final val\\_tally **5**" in success.value for success in at.success)

    at = open_page("pages/5_Results.py", run_dir=str(run_dir))
    assert not at.exception
    assert {metric.label: metric.value for metric in at.metric} == {"Tally": "5.0"}  # no classifier headline

    at = open_page("pages/6_Predict.py", run_dir=str(run_dir))
    assert any(text.value == f"tally predict section: {run_dir.name}" for text in at.text)
    assert "predict_uploads" not in [uploader.key for uploader in at.get("file_uploader")]

    at = open_page("pages/7_Export.py", run_dir=str(run_dir))  # no export section: the generic one
    assert at.radio(key="export_format").options == ["json", "txt"]
    at.radio(key="export_format").set_value("txt").run()
    at.button(key="export_start").click().run()
    assert not at.exception
    assert (run_dir / "export" / "txt" / "tally.txt").is_file()
    assert any("task kind" in success.value for success in at.success)


def test_a_kind_without_an_app_module_keeps_the_classifier_pages():
    assert app_kinds.section("classify", "results") is None
    assert app_kinds.section(kind_tally.NAME, "results") is kind_tally.results_section
    assert app_kinds.section(kind_tally.NAME, "layers") is None  # absent: the generic layer-group choice
    with pytest.raises(ValueError):
        app_kinds.section(kind_tally.NAME, "nonsense")


@pytest.fixture
def multitask_kind(monkeypatch):
    """The engine's multi-task kind; a stand-in with its words where this engine does not list one yet."""
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    if "multitask" not in {kind.name for kind in kinds.all_kinds()}:
        kinds.register(kinds.TaskKind(
            name="multitask", title="Several labels per image", summary="A labels table: a head per task.",
            layout="images with a CSV labels table", fit="tl_core.worker:run", ingest="tl_core.worker:run",
            evaluate="tl_core.worker:run", predictor="tl_core.use.predict:Predictor", export="tl_core.use.export:export_run"))


def test_the_multitask_kind_brings_its_labels_table_data_page(multitask_kind, small_sample, tmp_path, fake_jobs):
    from tl_core.data.datasets.labels_table import ingest_labelled_folder
    from tl_core.data.sample_data import write_fashion_task_table

    at = open_page("pages/2_Data.py", task="multitask")
    assert "table_zip_upload" in [uploader.key for uploader in at.get("file_uploader")]
    assert "use_sample" not in [button.key for button in at.button]  # no class folders to bring

    data = tmp_path / "data"
    shutil.copytree(small_sample, data)
    dataset = ingest_labelled_folder(data, write_fashion_task_table(data))
    at = open_page("pages/2_Data.py", task="multitask", dataset_dir=str(dataset.root))
    assert not at.exception
    audit = next(frame.value for frame in at.dataframe if "task" in frame.value.columns)
    assert audit["task"].tolist() == ["category", "group", "tags"]
    assert at.radio(key="val_source").value == "split"

    at = open_page("pages/4_Train.py", task="multitask", dataset_dir=str(dataset.root), freeze="head")
    at.button(key="start_training").click().run()
    assert fake_jobs[-1].submitted[-1].task == "multitask"
