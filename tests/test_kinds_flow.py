"""A newcomer's whole path for each new task kind, through app.py and the step pages (AppTest).

Data (choose the kind, upload its data) → Layers → Train (Start) → the worker trains the queued run → Results →
Predict → Export. The pages dispatch to the kind's sections (pages/ui/kinds.py); nothing here calls a section
directly, so a page that forgets a kind fails here.
"""
import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from apptest_support import open_page, plain
from pages.ui import nav
from tl_core.worker import run as train_run

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def _start_and_train(at, fake_jobs) -> Path:
    """Start on the Train page, then train the queued run here (the fake queue starts no worker)."""
    at.switch_page(nav.TRAIN_PAGE).run()
    assert not at.exception, at.exception
    at.button(key="start_training").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    config = fake_jobs[-1].submitted[-1]
    run_dir = Path(at.session_state["run_dir"])
    train_run(run_dir)
    return run_dir, config


def _open_finished(at, page: str, key: str, run_dir: Path):
    at.session_state[key] = str(run_dir)
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture()
def anomaly_tiles(tmp_path) -> Path:
    from tl_core.anomaly.synthetic import write_mvtec

    return write_mvtec(tmp_path / "tiles", "brick", seed=5, n_train=8, n_test_good=2, n_per_defect=2,
                       defects=("hole", "stain"))


def test_a_newcomer_goes_from_good_images_to_a_heat_map_and_an_export(anomaly_tiles, fake_jobs):
    at = open_page(nav.DATA_PAGE)
    at.radio(key="task").set_value("anomaly").run()
    assert not at.exception
    files = [(f"tiles/{p.relative_to(anomaly_tiles)}", p.read_bytes(), "image/png")
             for p in sorted(anomaly_tiles.rglob("*.png"))]
    at.file_uploader(key="anomaly_folder").set_value(files).run()
    at.button(key="anomaly_folder_ingest").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert Path(at.session_state["dataset_dir"]).is_dir()

    at.switch_page(nav.LAYERS_PAGE).run()  # the kind's own choice: which stages feed the memory bank
    assert not at.exception and at.multiselect(key="anomaly_stages").value
    at.session_state["image_size"] = 128  # small pictures: a fast fit
    run_dir, config = _start_and_train(at, fake_jobs)
    assert config.task == "anomaly" and config.kind_options["anomaly_layers"] == [2, 3]

    _open_finished(at, nav.RESULTS_PAGE, "results_run", run_dir)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Image AUROC"]) > 0.5 and at.slider(key="anomaly_threshold")

    _open_finished(at, nav.PREDICT_PAGE, "predict_run", run_dir)
    hole = anomaly_tiles / "test" / "hole" / "000.png"
    at.file_uploader(key="anomaly_predict_upload").set_value((hole.name, hole.read_bytes(), "image/png")).run()
    assert not at.exception and at.image  # the heat map over the picture
    assert any("score" in plain(box.value) for box in [*at.error, *at.success])

    _open_finished(at, nav.EXPORT_PAGE, "export_run", run_dir)
    at.button(key="anomaly_export").click().run()
    assert not at.exception and not at.error
    assert Path(at.session_state["anomaly_export_report"]["zip"]).is_file()


@pytest.fixture()
def boxes_zip(tmp_path) -> bytes:
    """A COCO zip of pasted-object scenes (tl_core.detect.sample), as a user would bring it."""
    from tl_core.detect.sample import write_set

    folder = write_set(tmp_path / "scenes", 16, fmt="coco", seed=1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"scenes/{path.relative_to(folder)}")
    return buffer.getvalue()


def test_a_newcomer_goes_from_a_zip_of_boxes_to_a_detector_and_an_export(boxes_zip, fake_jobs, tmp_path):
    at = open_page(nav.DATA_PAGE)
    at.radio(key="task").set_value("detect").run()
    assert not at.exception
    at.file_uploader(key="detect_zip").set_value(("scenes.zip", boxes_zip, "application/zip")).run()
    at.button(key="detect_import").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert Path(at.session_state["dataset_dir"]).is_dir()

    at.switch_page(nav.LAYERS_PAGE).run()
    assert not at.exception
    # A tiny timm model keeps the test fast; the page's own choices otherwise.
    at.session_state["backbone"], at.session_state["weights"] = "test_efficientnet", "none"
    at.session_state["freeze"], at.session_state["epochs"] = "all", 2
    at.session_state["image_size"] = 96
    run_dir, config = _start_and_train(at, fake_jobs)
    assert config.task == "detect"

    _open_finished(at, nav.RESULTS_PAGE, "results_run", run_dir)
    labels = [m.label for m in at.metric]
    assert any("mAP" in label for label in labels), labels

    _open_finished(at, nav.PREDICT_PAGE, "predict_run", run_dir)
    picture = io.BytesIO()
    Image.new("RGB", (96, 96), (120, 130, 140)).save(picture, "PNG")
    at.file_uploader(key="detect_predict_upload").set_value(("shelf.png", picture.getvalue(), "image/png")).run()
    assert not at.exception and at.image

    _open_finished(at, nav.EXPORT_PAGE, "export_run", run_dir)
    assert not at.exception
    at.button(key="detect_export_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.success, "the export was verified with ONNX Runtime"
