"""The detect kind's page sections (pages/ui/kind_detect.py) driven by Streamlit's AppTest on a finished run,
before the pages dispatch to them."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_core.detect.sample import write_set


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A small finished detection run (timm's tiny test model, 2 epochs at 96 px) in its own workspace."""
    import os

    from tl_core import kinds
    from tl_core import worker as train
    from tl_core.config import RunConfig
    from tl_core.ops.runs import create_run

    home = tmp_path_factory.mktemp("detect_app_home")
    data = write_set(tmp_path_factory.mktemp("yolo") / "set", 14, "yolo", seed=2, size=96)
    old = os.environ.get("TL_STUDIO_HOME")
    os.environ["TL_STUDIO_HOME"] = str(home)
    try:
        root = kinds.get("detect").call("ingest", data)
        run_dir = create_run(RunConfig(dataset_dir=str(root), task="detect", backbone="test_efficientnet",
                                       weights="none", image_size=96, batch_size=4, epochs=2, freeze="all"))
        train.run(run_dir)
    finally:
        if old is None:
            os.environ.pop("TL_STUDIO_HOME")
        else:
            os.environ["TL_STUDIO_HOME"] = old
    return {"home": home, "data": data, "root": root, "run_dir": run_dir}


def _results(run_dir):
    from pages.ui import kind_detect

    kind_detect.results_section(run_dir)


def _train(run_dir):
    from pages.ui import kind_detect

    kind_detect.train_section(run_dir)


def _predict(run_dir):
    from pages.ui import kind_detect

    kind_detect.predict_section(run_dir)


def _export(run_dir):
    from pages.ui import kind_detect

    kind_detect.export_section(run_dir)


def _data():
    from pages.ui import kind_detect

    kind_detect.data_section()


@pytest.fixture
def home(finished, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_HOME", str(finished["home"]))
    return finished


def test_train_section_shows_loss_terms_and_map(home):
    at = AppTest.from_function(_train, args=(str(home["run_dir"]),), default_timeout=60).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]
    assert titles == ["Training loss", "Validation mAP"]
    names = {trace["name"] for trace in json.loads(charts[0].proto.spec)["data"]}
    assert {"classification (focal)", "box (GIoU)"} <= names


def test_the_train_page_shows_a_running_detection_run_and_stops_it(home, tmp_path, navigation_pages, fake_jobs):
    """Progress and Stop are the Train page's own, for every kind; the detector's section adds its charts."""
    import shutil

    from apptest_support import open_page
    from pages.ui import nav
    from tl_core.ops.runs import RunFolder, write_status

    running = shutil.copytree(home["run_dir"], home["run_dir"].parent / "running")
    write_status(running, state="running")
    at = open_page(nav.TRAIN_PAGE, run_dir=str(running), task="detect", dataset_dir=str(home["root"]))
    assert not at.exception
    assert at.get("progress"), "the page's live progress"
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "Validation mAP" in titles
    at.button(key=f"stop::{running}").click().run()
    assert RunFolder(running).stop.exists()


def test_results_section_metrics_slider_confusion_and_gallery(home):
    at = AppTest.from_function(_results, args=(str(home["run_dir"]),), default_timeout=120).run()
    assert not at.exception
    assert [m.label for m in at.metric][:2] == ["mAP@50", "mAP@[.5:.95]"]
    assert at.dataframe[0].value["class"].tolist() == ["Trouser", "Bag", "Sneaker"]
    confusion = lambda: next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                             if "Confusion" in json.loads(c.proto.spec)["layout"]["title"]["text"])
    assert confusion()["data"][0]["x"][-1] == "background"
    low = sum(map(sum, confusion()["data"][0]["z"]))
    at.slider(key="detect_results_score").set_value(0.05).run()
    assert not at.exception
    assert sum(map(sum, confusion()["data"][0]["z"])) >= low  # a lower threshold shows at least as many boxes
    assert len(at.get("image")) >= 1


def test_predict_section_draws_boxes_on_an_upload(home):
    at = AppTest.from_function(_predict, args=(str(home["run_dir"]),), default_timeout=120).run()
    assert not at.exception
    picture = sorted((Path(home["data"]) / "images").glob("*.jpg"))[0]
    at.file_uploader(key="detect_predict_upload").upload(picture.name, picture.read_bytes(), "image/jpeg")
    at.slider(key="detect_predict_score").set_value(0.05).run()
    assert not at.exception
    assert len(at.get("image")) == 1


def test_data_section_imports_audits_and_saves_edited_boxes(home, tmp_path):
    import zipfile

    coco = write_set(tmp_path / "coco", 6, "coco", seed=8, size=96)
    archive = tmp_path / "coco.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in coco.rglob("*"):
            if path.is_file():
                z.write(path, "coco/" + path.relative_to(coco).as_posix())
    at = AppTest.from_function(_data, default_timeout=120).run()
    at.file_uploader(key="detect_zip").upload("coco.zip", archive.read_bytes(), "application/zip").run()
    at.button(key="detect_import").click().run()
    assert not at.exception
    first = at.session_state["dataset_dir"]
    assert Path(first).name.startswith("detect-")
    assert [m.label for m in at.metric] == ["Pictures", "Boxes", "Without boxes (background)"]
    assert at.metric[0].value == "6"
    at.button(key="detect_save_boxes").click().run()  # saving makes a new version; the first stays
    assert not at.exception
    assert at.session_state["dataset_dir"] != first and Path(first).is_dir()


def test_drawing_from_pictures_alone(home, tmp_path):
    from tl_core.detect import editing, formats

    pictures = sorted((Path(home["data"]) / "images").glob("*.jpg"))[:3]
    root = editing.new_boxset([(p.name, p.read_bytes()) for p in pictures] + [("notes.txt", b"hello")], ["cup"])
    boxset = formats.load_boxset(root)
    assert len(boxset.images) == 3 and boxset.refused[0]["name"] == "notes.txt"
    file = boxset.images[0]["file"]
    drawn = editing.with_boxes(root, file, [{"label": "cup", "box": [5, 6, 40, 50]},
                                            {"label": "plate", "box": [50, 50, 90, 80]}])
    again = formats.load_boxset(drawn)
    assert again.classes == ["cup", "plate"]
    assert next(i for i in again.images if i["file"] == file)["boxes"] == [[5, 6, 40, 50], [50, 50, 90, 80]]
    assert formats.load_boxset(root).images[0]["boxes"] == []  # the first version is unchanged
    with pytest.raises(ValueError, match="end after it starts"):
        editing.with_boxes(root, file, [{"label": "cup", "box": [40, 6, 5, 50]}])


def test_export_section_verifies_and_offers_the_zip(home):
    at = AppTest.from_function(_export, args=(str(home["run_dir"]),), default_timeout=300).run()
    at.button(key="detect_export_button").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert "Verified" in at.success[0].value
