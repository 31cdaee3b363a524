"""The pages of domain adaptation, driven by AppTest: target images on the Data page with the shift meter,
the choice of method on the Train page, source validation beside target accuracy on Results."""
import io

import pytest
from PIL import Image, ImageOps

from apptest_support import open_page, plain
from test_app import fake_run, finish_run, metric_values, small_dataset
from tl_core.data import datasets
from tl_core.ops import runs
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.ops.storage import atomic_write_json

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def _inverted_png(path) -> bytes:
    buffer = io.BytesIO()
    ImageOps.invert(Image.open(path).convert("L")).save(buffer, "PNG")
    return buffer.getvalue()


def test_target_upload_refuses_bad_files_and_the_shift_meter_speaks_in_words():
    dataset = small_dataset(per_class=10)
    files = [(f"camera2/{name}_{p.name}", _inverted_png(p), "image/png") for name in ("Bag", "Trouser", "Sneaker")
             for p in sorted((SAMPLE_DIR / name).glob("*.png"))[10:20]]
    files.append(("camera2/![x](https://example.com/leak).png", b"not an image at all", "image/png"))
    at = open_page("pages/2_Data.py", dataset_dir=str(dataset.root))
    at.file_uploader(key="target_upload").set_value(files).run()
    at.button(key="target_ingest").click().run()
    assert not at.exception and not at.error
    target = datasets.load_dataset(at.session_state["target_dir"])
    assert len(target.items) == 30 and target.source["unlabelled"]
    refused = at.dataframe[-1].value.to_dict("records")  # the target's refused files, last on the page
    assert [row["name"] for row in refused] == ["camera2/![x](https://example.com/leak).png"]
    at.button(key="measure_shift").click().run()
    assert not at.exception and not at.error
    assert float(metric_values(at)["Proxy A-distance"]) > 1.0
    assert any("look very different" in plain(info.value) or "look somewhat different" in plain(info.value)
               for info in at.info)
    assert len(at.image[-1].value) == 4 and len(at.image[-2].value) == 4  # typical images of each side


def test_the_train_page_offers_adaptation_only_with_target_images_and_submits_it(fake_jobs):
    dataset = small_dataset()
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root), freeze="head")
    assert not [r for r in at.radio if r.key == "adapt"]
    target = datasets.ingest_files([(p.name, p.read_bytes(), "x") for p in sorted((SAMPLE_DIR / "Bag").glob("*.png"))[:3]]
                                   + [(p.name, p.read_bytes(), "y") for p in sorted((SAMPLE_DIR / "Coat").glob("*.png"))[:3]])
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root), freeze="head", target_dir=str(target.root))
    at.radio(key="adapt").set_value("adabn").run()
    at.button(key="start_training").click().run()
    assert not at.exception and not at.error
    config = fake_jobs[-1].submitted[-1]
    assert (config.adapt, config.target_dir) == ("adabn", str(target.root))


def test_results_show_source_validation_beside_target_accuracy_and_runs_compare_them():
    dataset = small_dataset()
    run_dir = fake_run(dataset, epochs_done=2)
    finish_run(run_dir, dataset)
    metrics = runs.read_metrics(run_dir)
    metrics["target"] = {"method": "adabn", "applied": True,
                         "shift": {"pad": 1.8, "words": "the target images look very different: expect a drop, "
                                                        "try adaptation"},
                         "source_only": {"target_acc": 0.45, "confidence": 0.6, "entropy": 1.1},
                         "adapted": {"target_acc": 0.62, "confidence": 0.7, "entropy": 0.9}}
    atomic_write_json(run_dir / "metrics.json", metrics)
    at = open_page("pages/5_Results.py")
    assert not at.exception
    values = metric_values(at)
    assert values["Validation accuracy (your images)"] == "80.0%"
    assert values["Target accuracy, not adapted"] == "45.0%" and values["Target accuracy, adabn"] == "62.0%"
    at = open_page("pages/8_Runs.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert table.loc[0, "target_acc"] == pytest.approx(0.62) and table.loc[0, "adapt"] == "adabn"
