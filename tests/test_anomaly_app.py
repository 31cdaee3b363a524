"""The anomaly kind's page sections (pages/ui/kind_anomaly.py), driven by AppTest on real uploads and a real run.

Each section is run on its own with AppTest.from_function, as the pages will call it once they dispatch on
the kind. The run is fitted from uploads that include defect images and masks (synthetic defects on brick).
"""
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from apptest_support import plain
from tl_core.anomaly.synthetic import write_mvtec


def _data_script():
    from pages.ui import kind_anomaly

    kind_anomaly.data_section()


def _layers_script():
    from pages.ui import kind_anomaly

    kind_anomaly.layers_section()


def _results_script(run_dir):
    from pages.ui import kind_anomaly

    kind_anomaly.results_section(run_dir)


def _train_script(run_dir):
    from pages.ui import kind_anomaly

    kind_anomaly.train_section(run_dir)


def _predict_script(run_dir):
    from pages.ui import kind_anomaly

    kind_anomaly.predict_section(run_dir)


def _export_script(run_dir):
    from pages.ui import kind_anomaly

    kind_anomaly.export_section(run_dir)


@pytest.fixture(scope="session")
def tiles(tmp_path_factory) -> Path:
    """Brick in the MVTec layout: 12 good, 4 good and 3 × 3 defective test images with masks."""
    return write_mvtec(tmp_path_factory.mktemp("tiles") / "tiles", "brick", seed=3, n_train=12, n_test_good=4,
                       n_per_defect=3, defects=("hole", "stain", "foreign"))


@pytest.fixture(scope="session")
def app_run(tiles, tmp_path_factory) -> Path:
    """A finished anomaly run whose data came through the Data section's folder upload (defects and masks)."""
    from tl_core.ops import runs
    from tl_core.config import RunConfig
    from tl_core.worker import run

    root = tmp_path_factory.mktemp("app_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(root / "workspace"))
        at = AppTest.from_function(_data_script, default_timeout=60)
        at.run()
        files = [(f"tiles/{p.relative_to(tiles)}", p.read_bytes(), "image/png") for p in sorted(tiles.rglob("*.png"))]
        at.file_uploader(key="anomaly_folder").set_value(files).run()
        at.button(key="anomaly_folder_ingest").click().run()
        assert not at.exception and not at.error
        run_dir = runs.create_run(RunConfig(task="anomaly", dataset_dir=at.session_state["dataset_dir"],
                                            image_size=128))
        run(run_dir)
    return run_dir


def test_data_section_ingests_good_uploads_and_audits_them(tiles):
    at = AppTest.from_function(_data_script, default_timeout=60)
    at.run()
    good = [(p.name, p.read_bytes(), "image/png") for p in sorted((tiles / "train" / "good").iterdir())]
    good.append(("broken.png", b"\x89PNG\r\n\x1a\n cut", "image/png"))
    at.file_uploader(key="anomaly_good_files").set_value(good).run()
    at.text_input(key="anomaly_defect_type").set_value("hole").run()
    at.file_uploader(key="anomaly_defect_files").set_value(
        [(p.name, p.read_bytes(), "image/png") for p in sorted((tiles / "test" / "hole").iterdir())]).run()
    at.button(key="anomaly_files_ingest").click().run()
    assert not at.exception and not at.error
    assert Path(at.session_state["dataset_dir"]).is_dir()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Good images"] == "12" and metrics["Defect images"] == "3" and metrics["With masks"] == "0"
    assert any("hole: no masks, so image scores only" in plain(i.value) for i in at.info)
    refused = next(frame.value for frame in at.dataframe if "reason" in frame.value.columns)
    assert refused["name"].tolist() == ["broken.png"]


def test_data_section_refuses_one_good_image_clearly(tiles):
    at = AppTest.from_function(_data_script, default_timeout=60)
    at.run()
    one = sorted((tiles / "train" / "good").iterdir())[0]
    at.file_uploader(key="anomaly_good_files").set_value([(one.name, one.read_bytes(), "image/png")]).run()
    at.button(key="anomaly_files_ingest").click().run()
    assert "dataset_dir" not in at.session_state
    assert "only 1 good image" in plain(at.error[0].value) and "at least 5" in plain(at.error[0].value)


def test_layers_section_sets_the_kind_options():
    at = AppTest.from_function(_layers_script, default_timeout=60)
    at.run()
    assert not at.exception
    assert at.session_state["anomaly_options"] == {"anomaly_layers": [2, 3], "bank_fraction": 0.03,
                                                   "false_alarm_rate": 0.02}
    stages = at.multiselect(key="anomaly_stages")
    stages.set_value([o for o in stages.options if o.startswith("stage 1")]).run()
    assert at.session_state["anomaly_options"]["anomaly_layers"] == [1]


def test_results_section_threshold_slider_moves_the_counts(app_run):
    at = AppTest.from_function(_results_script, args=(str(app_run),), default_timeout=60)
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Image AUROC"]) > 0.8 and float(metrics["Pixel AUROC"]) > 0.8
    assert metrics["Good images"] == "12"  # the training set, not the labelled good images
    assert len(at.get("plotly_chart")) == 2
    slider = at.slider(key="anomaly_threshold")
    slider.set_value(slider.min).run()  # everything flagged: no defect missed, every good image a false alarm
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Defects missed"] == "0" and metrics["Good passed"] == "0"
    assert int(metrics["False alarms"]) == 12 + 4
    captions = [plain(c) for image in at.image for c in image.captions]
    assert len(captions) == 4 + 9 and sum("FALSE ALARM" in c for c in captions) == 4  # test/good: all flagged
    assert plain(captions[0]).split(" · ")[0] in ("hole", "stain", "foreign"), "worst first"
    slider.set_value(slider.max).run()  # nothing flagged: every defect missed, and marked so
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Defects caught"] == "0" and metrics["Defects missed"] == "9"
    captions = [plain(c) for image in at.image for c in image.captions]
    assert sum("MISSED DEFECT" in c for c in captions) == 9
    assert not at.exception


def test_train_section_shows_the_bank_and_threshold(app_run):
    at = AppTest.from_function(_train_script, args=(str(app_run),), default_timeout=60)
    at.run()
    texts = [plain(c.value) for c in at.caption]
    assert any(t.startswith("memory bank:") for t in texts) and any(t.startswith("threshold") for t in texts)


def test_predict_section_gives_score_verdict_and_heat_map(app_run, tiles):
    at = AppTest.from_function(_predict_script, args=(str(app_run),), default_timeout=60)
    at.run()
    hole = tiles / "test" / "hole" / "001.png"
    at.file_uploader(key="anomaly_predict_upload").set_value((hole.name, hole.read_bytes(), "image/png")).run()
    assert not at.exception
    assert plain(at.error[0].value).startswith("Anomalous: score")
    good = io.BytesIO()
    Image.open(tiles / "test" / "good" / "000.png").save(good, "PNG")
    at.file_uploader(key="anomaly_predict_upload").set_value(("good.png", good.getvalue(), "image/png")).run()
    assert plain(at.success[0].value).startswith("Normal: score")


def test_export_section_verifies_and_offers_the_bundle(app_run, tmp_path):
    copy = tmp_path / app_run.name
    shutil.copytree(app_run, copy)
    at = AppTest.from_function(_export_script, args=(str(copy),), default_timeout=120)
    at.run()
    at.button(key="anomaly_export").click().run()
    assert not at.exception and not at.error
    assert plain(at.success[0].value).startswith("Verified on 8 images")
    report = at.session_state["anomaly_export_report"]
    assert Path(report["zip"]).is_file() and report["max_score_diff"] <= 1e-3
    assert json.loads((Path(report["bundle"]) / "threshold.json").read_text())["method"] == "best_f1"
