"""The Streamlit pages, driven headless by streamlit.testing.v1.AppTest through app.py's navigation.

Training is not run here: a fake job manager records what Start submits, and run folders are
written by hand (events.jsonl, status.json, metrics.json, predictions.csv) as the worker would.
"""
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from apptest_support import open_page, plain
from tl_core.models import backbones
from tl_core.data import datasets
from tl_core.ops import runs
from tl_core.config import RunConfig
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.ops.storage import atomic_write_json

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")

EMBEDDED = backbones.EMBEDDED_MODEL


def metric_values(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def small_dataset(classes=("Bag", "Trouser", "Sneaker"), per_class=6) -> datasets.Dataset:
    files = [(path.name, path.read_bytes(), name) for name in classes
             for path in sorted((SAMPLE_DIR / name).glob("*.png"))[:per_class]]
    return datasets.ingest_files(files, name="small")


def fake_run(dataset: datasets.Dataset, state: str = "running", epochs_done: int = 2) -> Path:
    """A run folder as the worker leaves it after `epochs_done` epochs of 5."""
    run_dir = runs.create_run(RunConfig(dataset_dir=str(dataset.root), backbone=EMBEDDED, epochs=5))
    start = time.time()
    events = [{"t": start, "event": "fit_start", "epochs": 5, "probe_epochs": 5, "n_train": 12, "n_val": 6,
               "classes": dataset.classes, "device": "CPU", "image_size": 96}]
    for epoch in range(1, epochs_done + 1):
        events.append({"t": start + epoch, "event": "epoch_end", "phase": "probe", "epoch": epoch, "step": epoch,
                       "train_loss": 1.0 / epoch, "train_acc": 0.5 + 0.1 * epoch, "val_loss": 1.1 / epoch,
                       "val_acc": 0.4 + 0.1 * epoch, "seconds": 1.0, "elapsed": float(epoch), "images_per_s": 12.0})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    runs.write_status(run_dir, state=state, pid=None, started=start)
    return run_dir


def finish_run(run_dir: Path, dataset: datasets.Dataset) -> None:
    """metrics.json, predictions.csv (two mistakes) and a done status."""
    paths = dataset.paths()
    labels = [dataset.classes[k] for k in dataset.labels()]
    predicted = list(labels)
    predicted[0], predicted[-1] = labels[-1], labels[0]
    rows = ["path,label,predicted,confidence"] + [f"{p},{t},{q},0.{70 + i:02d}"
                                                   for i, (p, t, q) in enumerate(zip(paths, labels, predicted))]
    (run_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
    classes = dataset.classes
    atomic_write_json(run_dir / "metrics.json", {
        "val_acc": 0.8, "val_loss": 0.55, "macro_f1": 0.79, "classes": classes,
        "per_class": {name: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 6} for name in classes},
        "confusion": [[5 if i == j else (1 if j == (i + 1) % len(classes) else 0) for j in range(len(classes))]
                      for i in range(len(classes))],
        "best_epoch": 2, "epochs_run": 2, "wall_s": 3.5, "images_per_s": 40.0, "device": "CPU (2 threads)",
        "trainable_params": 2562, "total_params": 3373570})
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"t": time.time(), "event": "fit_end", "val_acc": 0.8, "val_loss": 0.55,
                            "best_epoch": 2, "wall_s": 3.5}) + "\n")
    runs.write_status(run_dir, state="done", ended=time.time())


# ---------------------------------------------------------------- 1 Backbone
def test_backbone_page_ranks_image_sizes_on_the_users_images():
    dataset = small_dataset(per_class=4)
    at = open_page("pages/1_Backbone.py", dataset_dir=str(dataset.root))
    at.button(key="rank_backbones").click().run()
    assert not at.exception
    table = next(frame.value for frame in at.dataframe if "image size" in frame.value.columns)
    assert sorted(table["image size"]) == [160, 224, 288]  # offline, one backbone: its sizes are compared
    assert table["accuracy on your images"].between(0, 100).all()
    assert any("ranks first" in caption.value for caption in at.caption)


def test_backbone_page_lists_the_embedded_model_offline_and_preselects_it():
    at = open_page()
    catalogue = at.dataframe[0].value.set_index("name")
    assert catalogue.loc[EMBEDDED, "offline"]
    assert at.session_state["backbone"] == EMBEDDED and at.session_state["weights"] == "embedded"
    assert any("available offline: yes" in s.value for s in at.success)
    assert any(c.value.startswith("Device: ") for c in at.caption)

    at.text_input(key="model_query").set_value("resnet18").run()
    assert "resnet18.a1_in1k" in at.selectbox(key="model_search_pick").options
    at.selectbox(key="model_search_pick").set_value("resnet18.a1_in1k")
    at.button(key="use_searched_model").click().run()
    assert at.session_state["backbone"] == "resnet18.a1_in1k"
    assert at.session_state["weights"] == "hub"
    assert not at.exception


def test_an_uploaded_safetensors_file_becomes_the_weights_and_lives_in_the_workspace(_workspace):
    import safetensors.torch
    import torch

    at = open_page()
    at.radio(key="weights_source").set_value("upload").run()
    weights = safetensors.torch.save({"conv_stem.weight": torch.zeros(1)})
    at.file_uploader(key="weights_upload").set_value(("../my weights.safetensors", weights, "application/octet-stream"))
    at.run()
    saved = Path(at.session_state["weights"])  # kept by content: weights/<sha256 prefix>/<name>
    assert saved.name == "my_weights.safetensors" and saved.parent.parent == _workspace / "weights"
    assert saved.read_bytes() == weights and backbones.uploaded_weights_digest(saved) == saved.parent.name
    assert any("my_weights.safetensors (sha256" in plain(success.value) for success in at.success)
    at.button(key="check_weights").click().run()
    assert not at.exception
    assert "does not fit" in at.error[0].value  # a message that names the problem, not a traceback


# ---------------------------------------------------------------- 2 Data
def test_sample_button_ingests_ten_classes_and_shows_the_audit():
    at = open_page("pages/2_Data.py")
    at.button(key="use_sample").click().run()
    assert not at.exception and not at.error
    dataset = datasets.load_dataset(at.session_state["dataset_dir"])
    assert dataset.counts() == {name: 30 for name in dataset.classes} and len(dataset.classes) == 10
    assert metric_values(at)["Images"] == "300" and metric_values(at)["Classes"] == "10"
    assert at.get("plotly_chart"), "the images-per-class chart"
    assert len(at.image) == 10, "a row of thumbnails per class"
    at.button(key="use_sample").click().run()  # a second click reuses the sample
    assert len(datasets.list_datasets()) == 1


def test_the_data_page_counts_the_split_the_run_will_make():
    """Issue 25: the hold-out line once rounded 10 x 0.25 = 2.5 down (Python's round) where the split rounds half
    up: it said 6 validate for a run that held out 9."""
    dataset = small_dataset(per_class=10)
    at = open_page("pages/2_Data.py", dataset_dir=str(dataset.root), val_source="split", val_fraction=0.25,
                   freeze="all")
    train, val = datasets.stratified_split(dataset.labels(), 0.25)
    assert (len(train), len(val)) == (21, 9)
    assert any(c.value.startswith("21 images train and 9 validate") for c in at.caption), [c.value for c in at.caption]


def test_zip_upload_lists_the_refused_file_with_its_reason():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("Bag", "Trouser"):
            for path in sorted((SAMPLE_DIR / name).glob("*.png"))[:4]:
                zf.write(path, f"clothes/{name}/{path.name}")
        zf.writestr("clothes/Bag/notes.txt", "not a picture")
    at = open_page("pages/2_Data.py")
    at.file_uploader(key="train_zip_upload").set_value(("clothes.zip", archive.getvalue(), "application/zip"))
    at.run()
    at.button(key="train_zip_ingest").click().run()
    assert not at.exception and not at.error
    refused = at.dataframe[-1].value
    assert refused.to_dict("records") == [{"name": "clothes/Bag/notes.txt", "reason": "not an image (text file)"}]
    assert metric_values(at)["Files refused"] == "1"


def test_folder_upload_uses_class_folders_and_reports_a_broken_image():
    files = [(f"mine/{name}/{path.name}", path.read_bytes(), "image/png") for name in ("Bag", "Sneaker")
             for path in sorted((SAMPLE_DIR / name).glob("*.png"))[:3]]
    files.append(("mine/Sneaker/broken.png", b"\x89PNG\r\n\x1a\n truncated", "image/png"))
    at = open_page("pages/2_Data.py")
    at.file_uploader(key="train_folder_upload").set_value(files).run()
    at.button(key="train_folder_ingest").click().run()
    assert not at.exception and not at.error
    dataset = datasets.load_dataset(at.session_state["dataset_dir"])
    assert dataset.name == "mine" and dataset.counts() == {"Bag": 3, "Sneaker": 3}
    refused = at.dataframe[-1].value.to_dict("records")
    assert [row["name"] for row in refused] == ["mine/Sneaker/broken.png"]
    assert "corrupt" in refused[0]["reason"]


def test_an_unusable_upload_is_a_message_not_a_traceback():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("only/cats/a.txt", "text")
    at = open_page("pages/2_Data.py")
    at.file_uploader(key="train_zip_upload").set_value(("only.zip", archive.getvalue(), "application/zip")).run()
    at.button(key="train_zip_ingest").click().run()
    assert not at.exception
    assert "fewer than 2 classes" in at.error[0].value
    assert at.session_state["dataset_dir"] is None


def test_images_per_class_and_webcam_pictures_make_datasets():
    def png(name, index):
        return sorted((SAMPLE_DIR / name).glob("*.png"))[index].read_bytes()

    at = open_page("pages/2_Data.py")
    for class_id, name in enumerate(("Bag", "Sandal")):
        at.text_input(key=f"class_name_{class_id}").set_value(name.lower())
        at.file_uploader(key=f"class_files_{class_id}").set_value(
            [(f"{name}{i}.png", png(name, i), "image/png") for i in range(3)])
    at.run()
    at.button(key="create_per_class").click().run()
    assert not at.exception and not at.error
    assert datasets.load_dataset(at.session_state["dataset_dir"]).counts() == {"bag": 3, "sandal": 3}

    from PIL import Image
    for name in ("Bag", "Bag", "Sandal", "Sandal"):
        photo = io.BytesIO()
        Image.open(io.BytesIO(png(name, 5))).convert("RGB").save(photo, "JPEG")
        at.text_input(key="webcam_class").set_value(name.lower())
        at.camera_input(key="webcam_shot").set_value(("shot.jpg", photo.getvalue(), "image/jpeg"))
        at.run()
        at.button(key="webcam_keep").click().run()
    assert len(at.session_state["webcam_shots"]) == 4
    at.button(key="webcam_create").click().run()
    assert not at.exception and not at.error
    webcam = datasets.load_dataset(at.session_state["dataset_dir"])
    assert webcam.name == "webcam pictures" and webcam.counts() == {"bag": 2, "sandal": 2}


def test_webcam_pictures_get_a_live_guess_from_the_ones_kept():
    from PIL import Image

    def photo(name, index):
        out = io.BytesIO()
        Image.open(sorted((SAMPLE_DIR / name).glob("*.png"))[index]).convert("RGB").save(out, "JPEG")
        return ("shot.jpg", out.getvalue(), "image/jpeg")

    at = open_page("pages/2_Data.py")
    for name in ("Bag", "Trouser"):
        at.text_input(key="webcam_class").set_value(name.lower())
        at.camera_input(key="webcam_shot").set_value(photo(name, 1))
        at.run()
        at.button(key="webcam_keep").click().run()
    at.camera_input(key="webcam_shot").set_value(photo("Trouser", 6))  # a new picture: guessed before it is kept
    at.run()
    assert not at.exception
    live = [info.value.replace("\\", "") for info in at.info if "Live guess" in info.value]
    assert live and "from the 2 pictures kept so far: trouser" in live[0]


# ---------------------------------------------------------------- 3 Layers
def test_layer_switches_change_the_trainable_parameter_total():
    at = open_page("pages/3_Layers.py", image_size=64, image_size_backbone=EMBEDDED)
    head_only = metric_values(at)["Trainable parameters"]
    assert at.session_state["freeze"] == "auto"  # the default plan: measured on the images when trained
    assert any(slider.key == "auto_budget" for slider in at.slider)
    at.toggle(key=f"learns::{EMBEDDED}::blocks.6").set_value(True).run()
    assert not at.exception
    with_top_block = metric_values(at)["Trainable parameters"]
    assert int(with_top_block.replace(",", "")) > int(head_only.replace(",", ""))
    assert at.session_state["freeze"] == "blocks.6" and at.session_state["freeze_preset"] == "custom"
    at.radio(key="freeze_preset").set_value("all").run()
    assert at.session_state["freeze"] == "all"
    assert all(toggle.value for toggle in at.toggle if toggle.key.startswith("learns::"))
    assert "Estimated time per epoch" in metric_values(at)


# ---------------------------------------------------------------- 4 Train
def test_train_page_first_asks_for_data():
    at = open_page("pages/4_Train.py")
    assert any(link.value == "2 · Data" for link in at.page_link)
    assert not at.button


def test_start_submits_the_chosen_config_and_the_live_view_draws_the_run(fake_jobs):
    dataset = small_dataset()
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root), freeze="head")
    at.number_input(key="image_size").set_value(96)
    at.number_input(key="epochs").set_value(3)
    at.button(key="start_training").click().run()
    assert not at.exception and not at.error
    config = fake_jobs[-1].submitted[-1]
    assert (config.backbone, config.weights, config.freeze, config.epochs, config.image_size) == (
        EMBEDDED, "embedded", "head", 3, 96)
    run_dir = Path(at.session_state["run_dir"])
    assert runs.read_status(run_dir)["state"] == "queued"
    assert any("Waiting in the queue (position 1)" in info.value for info in at.info)

    live = fake_run(dataset, epochs_done=2)
    at.session_state["run_dir"] = str(live)
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    assert "Epoch 2 of 5" in at.get("progress")[0].proto.text

    finish_run(live, dataset)
    at.run()
    assert any("final validation accuracy **80.0%**" in s.value for s in at.success)
    assert any(link.value.startswith("See the results") for link in at.page_link)


def test_the_augmentation_preview_shows_changed_sample_images():
    dataset = small_dataset()
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root), augment="strong", image_size=64,
                   image_size_backbone=EMBEDDED)
    assert not at.exception
    assert len(at.image[0].value) == len(dataset.classes)


def test_a_reload_finds_the_live_run_and_a_failed_run_shows_its_error():
    dataset = small_dataset()
    live = fake_run(dataset, epochs_done=1)
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root))
    assert at.session_state["run_dir"] == str(live)
    runs.write_status(live, state="failed", error="out of memory: try a smaller batch size")
    at.run()
    assert plain(at.error[0].value) == "The run failed: out of memory: try a smaller batch size"


# ---------------------------------------------------------------- 5 Results
def test_results_show_metrics_and_the_images_it_got_wrong():
    dataset = small_dataset()
    run_dir = fake_run(dataset, epochs_done=2)
    finish_run(run_dir, dataset)
    at = open_page("pages/5_Results.py")
    assert not at.exception
    values = metric_values(at)
    assert values["Accuracy"] == "80.0%" and values["Macro F1"] == "0.790"
    assert at.dataframe[0].value["class"].tolist() == dataset.classes
    captions = at.image[-1].captions  # the mistakes, after the images of the chosen confusion cell
    assert len(captions) == 2
    assert plain(captions[0]) == f"{dataset.classes[-1]} → {dataset.classes[0]} (87%)"
    assert len(at.get("plotly_chart")) == 4  # confusion matrix, reliability, loss, accuracy
    assert any(link.value == "All runs, side by side" for link in at.page_link)


def test_results_without_runs_point_to_training():
    at = open_page("pages/5_Results.py")
    assert any(link.value == "4 · Train" for link in at.page_link)


# ---------------------------------------------------------------- 6 Predict, 7 Export, 8 Runs
@pytest.mark.parametrize("page", ["pages/6_Predict.py", "pages/7_Export.py"])
def test_predict_and_export_first_ask_for_a_finished_run(page):
    dataset = small_dataset()
    fake_run(dataset, state="running")  # not finished: nothing to predict with or export yet
    at = open_page(page)
    assert any("No finished run yet" in info.value for info in at.info)
    assert any(link.value == "4 · Train" for link in at.page_link)


def test_runs_page_lists_every_run_and_compares_two_or_more():
    dataset = small_dataset()
    first, second = fake_run(dataset), fake_run(dataset)
    finish_run(first, dataset)
    finish_run(second, dataset)
    at = open_page("pages/8_Runs.py")
    assert sorted(at.dataframe[0].value["run_id"]) == sorted([first.name, second.name])
    assert sorted(at.multiselect(key="runs_compare").value) == sorted([str(first), str(second)])
    settings = at.dataframe[1].value.set_index("setting")
    assert not settings["differs"].any()  # the same settings twice
    assert settings.loc["validation accuracy"].drop("differs").tolist() == ["80.0%", "80.0%"]
    assert len(at.get("plotly_chart")) == 3
