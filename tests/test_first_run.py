"""The stumbles a newcomer met on a first run (issue 16), each pinned by what the app or the engine now does.

AppTest drives the pages as test_app.py does (a fake job manager; run folders written by hand as the
worker leaves them); the engine parts run for real on small data.
"""
import io
import json
import stat
import time
import zipfile
from pathlib import Path

import pytest
import torch

from apptest_support import open_page, plain
from tl_core.use import advice, compare
from tl_core.data import augment, datasets
from tl_core.models import backbones, layers
from tl_core.plan import plan_cost
from tl_core.ops import runs, words
from tl_core.fit.callbacks import ConsoleProgress, EarlyStopping
from tl_core.config import PROBE_EPOCHS_BEFORE_FINETUNE, RunConfig
from tl_core.fit.run_data import planned_validation
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.ops.storage import atomic_write_json

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")

EMBEDDED = backbones.EMBEDDED_MODEL


def small_dataset(classes=("Bag", "Trouser", "Sneaker"), per_class=6, name="small") -> datasets.Dataset:
    files = [(path.name, path.read_bytes(), label) for label in classes
             for path in sorted((SAMPLE_DIR / label).glob("*.png"))[:per_class]]
    return datasets.ingest_files(files, name=name)


def done_run(dataset: datasets.Dataset, events: list[dict], freeze: str = "head", **metrics) -> Path:
    """A finished run folder with these events and metrics (the rest as a worker writes them)."""
    run_dir = runs.create_run(RunConfig(dataset_dir=str(dataset.root), backbone=EMBEDDED, freeze=freeze))
    classes = dataset.classes
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "predictions.csv").write_text("path,label,predicted,confidence\n")
    atomic_write_json(run_dir / "metrics.json", {
        "val_acc": 0.9, "val_loss": 0.3, "macro_f1": 0.9, "classes": classes, "n_train": 14, "n_val": 4,
        "per_class": {name: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 6} for name in classes},
        "confusion": [[6 if i == j else 0 for j in range(len(classes))] for i in range(len(classes))],
        "best_epoch": 2, "epochs_run": 2, "wall_s": 185.0, "images_per_s": 40.0, "device": "CPU",
        "validation": "20% held out", "validation_method": {"kind": "holdout", "fraction": 0.2}, **metrics})
    runs.write_status(run_dir, state="done", ended=time.time())
    return run_dir


def epoch(n, phase, train_acc, val_acc):
    return {"event": "epoch_end", "epoch": n, "phase": phase, "train_acc": train_acc, "val_acc": val_acc,
            "train_loss": 1 - train_acc, "val_loss": 1 - val_acc, "seconds": 1.0}


def sidebar_text(at) -> str:
    """The sidebar's words, without markdown's bold and code marks."""
    return plain(" ".join(m.value for m in at.sidebar.markdown)).replace("**", "").replace("`", "")


# ---------------------------------------------------------------- Train: what the run will really do
def test_validation_said_before_the_run_is_the_one_the_run_uses():
    labels = [k for k in range(3) for _ in range(6)]
    assert planned_validation(labels, "head", "none", 0.2, separate=False).startswith("5-fold cross-validation")
    assert planned_validation(labels, "head", "light", 0.2, separate=False) == "20% held out"  # trains on images
    assert planned_validation(labels, "top-2", "none", 0.2, separate=False) == "20% held out"
    assert "5-fold cross-validation if the Auto plan keeps feature extraction, 20% held out if it fine-tunes" \
        == planned_validation(labels, "auto", "none", 0.2, separate=False).replace(" (out-of-fold predictions)", "")
    assert planned_validation(labels, "head", "none", 0.2, separate=True) == "a separate validation set"


def test_train_page_says_cross_validation_for_a_head_only_run_and_counts_the_probe_epochs():
    dataset = small_dataset()
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root), freeze="head", image_size=96,
                   image_size_backbone=EMBEDDED)
    summary = plain(next(m.value for m in at.markdown if "**Data**" in m.value))
    assert "5-fold cross-validation" in summary and "held out" not in summary
    assert f"{PROBE_EPOCHS_BEFORE_FINETUNE} more epochs" in at.number_input(key="epochs").help
    at.session_state["freeze"] = "top-2"
    at.run()
    assert "20% held out" in plain(next(m.value for m in at.markdown if "**Data**" in m.value))


def test_progress_names_the_feature_pass_and_the_probe_epochs_added_to_the_users():
    start = [{"event": "fit_start", "epochs": 15, "probe_epochs": 5},
             {"event": "phase_start", "phase": "probe", "epochs": 5, "epoch": 0}]
    fraction, text = words.progress(start, {"state": "running"})
    assert (fraction, text) == (0.0, "Computing features: every image goes through the frozen backbone once…")
    events = start + [epoch(k, "probe", 0.8, 0.7) for k in range(1, 6)]
    events += [{"event": "phase_start", "phase": "finetune", "epochs": 10, "epoch": 5}]
    assert "running the frozen layers once" in words.progress(events, {"state": "running"})[1]
    events += [epoch(6, "finetune", 0.9, 0.8)]
    text = words.progress(events, {"state": "running"})[1]
    assert text.startswith("Epoch 6 of 15 (the 10 you set, after 5 fitting the head) · about ")
    head_only = [{"event": "fit_start", "epochs": 10, "probe_epochs": 10}, epoch(1, "probe", 0.8, 0.7)]
    assert words.progress(head_only, {"state": "running"})[1].startswith("Epoch 1 of 10 · about")


# ---------------------------------------------------------------- the sidebar
def test_sidebar_follows_the_layers_choice_at_once_and_says_which_run_is_shown():
    dataset = small_dataset()
    at = open_page("pages/3_Layers.py", dataset_dir=str(dataset.root), image_size=64, image_size_backbone=EMBEDDED)
    at.radio(key="freeze_preset").set_value("top").run()
    at.slider(key="freeze_top_n").set_value(2).run()
    assert not at.exception
    assert at.session_state["freeze"] == "top-2"
    assert "Trains: top-2" in sidebar_text(at)  # drawn after the page: not one step behind

    full = done_run(dataset, [epoch(1, "probe", 0.9, 0.9)], freeze="all")
    at.session_state["freeze"] = "head"
    at.switch_page("pages/5_Results.py").run()
    assert not at.exception
    text = sidebar_text(at)
    assert "Next run" in text and "Trains: head" in text
    from tl_core.use.run_facts import run_name

    assert f"Showing run: {run_name(full)}" in text and "trained all" in text  # its name, not its id


# ---------------------------------------------------------------- Layers: sizes and times of the real model
def test_layers_page_counts_the_head_for_the_datasets_classes():
    dataset = small_dataset()  # 3 classes
    at = open_page("pages/3_Layers.py", dataset_dir=str(dataset.root), image_size=64, image_size_backbone=EMBEDDED,
                   freeze_preset="head")
    model = backbones.create_model(EMBEDDED, 3, weights="none")
    groups = layers.layer_groups(model)
    head = groups[-1].num_params
    assert head == 1280 * 3 + 3
    assert at.metric[0].value == f"{head:,}"
    at.radio(key="freeze_preset").set_value("top").run()
    at.slider(key="freeze_top_n").set_value(2).run()
    trained = layers.apply_freeze(model, groups, layers.parse_freeze("top-2", groups), "eval")["trainable_params"]
    assert at.metric[0].value == f"{trained:,}"  # what the run will report, to the parameter


def test_plan_cost_counts_what_a_run_does(monkeypatch):
    """Every timed call (really run) counts as 0.8 s a batch of 8: the accounting, not the clock, is tested."""
    monkeypatch.setattr(plan_cost, "_seconds", lambda call: (call(), 0.8)[1])
    model = backbones.create_model("test_efficientnet", 4, weights="none")
    groups = layers.layer_groups(model)

    def cost(plan, augment="none"):
        return plan_cost.estimate(model, 64, layers.parse_freeze(plan, groups), "eval", 80, 20, augment)

    per_image = 0.1
    assert cost("head") == pytest.approx({"once_s": 100 * per_image, "epoch_s": 0})  # one pass, then the probe
    assert cost("head", "light") == pytest.approx({"once_s": 0, "epoch_s": 100 * per_image})  # every epoch
    # top-1: the probe's features and the frozen prefix once; each epoch trains the rest on 80, validates 20
    assert cost("top-1") == pytest.approx({"once_s": 200 * per_image, "epoch_s": 100 * per_image})
    assert cost("top-1", "light") == pytest.approx({"once_s": 100 * per_image, "epoch_s": 100 * per_image})


# ---------------------------------------------------------------- Results: a weak run says so first
def test_an_unstable_run_is_said_above_its_accuracy_which_has_an_interval():
    dataset = small_dataset()
    events = [epoch(1, "probe", 0.9, 0.85), epoch(2, "probe", 0.95, 0.9), epoch(3, "finetune", 0.4, 0.3),
              epoch(4, "finetune", 0.3, 0.2)]
    run_dir = done_run(dataset, events, freeze="all")
    at = open_page("pages/5_Results.py", run_dir=str(run_dir))
    assert not at.exception
    first = plain(at.warning[0].value)
    assert first.startswith("Unstable run: fine-tuning collapsed to 20% validation accuracy")
    assert "Try: train fewer layers or lower the learning rate" in first
    tile = next(m for m in at.metric if m.label == "Accuracy")
    assert tile.value == "90.0%" and tile.delta.startswith("95 %: ")
    low, high = (float(x.strip(" %")) / 100 for x in tile.delta[len("95 %: "):].split("–"))
    assert low < 0.9 < high
    assert next(m for m in at.metric if m.label == "Time").value == "3.1 min"  # fits the tile


def test_headline_speaks_of_learning_by_heart_thin_classes_and_stays_quiet_otherwise():
    classes = ["cat", "dog", "fox"]
    metrics = {"val_acc": 0.9, "classes": classes, "best_epoch": 2, "confusion": [[3, 0, 0], [0, 3, 0], [0, 0, 3]],
               "per_class": {name: {"support": 10} for name in classes}}
    assert advice.headline(metrics, [epoch(1, "probe", 0.92, 0.88), epoch(2, "probe", 0.93, 0.9)]) is None
    memorised = advice.headline({**metrics, "val_acc": 0.67},
                                [epoch(1, "probe", 1.0, 0.67), epoch(2, "probe", 1.0, 0.67)])
    assert memorised.startswith("Weak result: training accuracy was 100% from the first epoch against 67%")
    thin = advice.headline({**metrics, "per_class": {**metrics["per_class"], "fox": {"support": 3}}},
                           [epoch(1, "probe", 0.92, 0.9)])
    assert thin.startswith("Handle with care: fox has only 3 validation images") and "33%" in thin


def test_heat_map_captions_say_which_model_answers_for_cross_validated_mistakes(head_run, tmp_path, monkeypatch):
    import shutil

    workspace = tmp_path / "ws"
    run_dir = workspace / "runs" / head_run.name
    shutil.copytree(head_run, run_dir)
    monkeypatch.setenv("TL_STUDIO_HOME", str(workspace))
    metrics = runs.read_metrics(run_dir)
    assert runs.validation_kind(metrics) == "cv"
    at = open_page("pages/5_Results.py", run_dir=str(run_dir))
    assert any("Caption: true class → cross-validated prediction (confidence)." in plain(c.value)
               for c in at.caption)
    at.toggle(key="results_heatmaps").set_value(True).run()
    assert not at.exception
    assert any("Two models answer here" in info.value for info in at.info)  # a box, not small print
    assert any("cross-validated prediction (confidence), then the final model's answer where it differs"
               in plain(c.value) for c in at.caption)


# ---------------------------------------------------------------- Runs: what the scores were measured on
def test_runs_comparison_names_dataset_and_validation_and_shows_a_dash_for_what_is_not_measured():
    dataset = small_dataset(name="my pets")
    finished = done_run(dataset, [epoch(1, "probe", 0.9, 0.9)],
                        validation="5-fold cross-validation", validation_method={"kind": "cv", "folds": 5})
    other = done_run(dataset, [epoch(1, "probe", 0.9, 0.9)])
    unfinished = runs.create_run(RunConfig(dataset_dir=str(dataset.root), backbone=EMBEDDED))
    rows = {row["setting"]: row for row in compare.settings_table([finished, other, unfinished])}
    assert rows["dataset"]["values"] == ["my pets"] * 3
    assert rows["validation"]["values"] == ["5-fold cross-validation", "20% held out", None]
    assert rows["validation"]["differs"]
    at = open_page("pages/8_Runs.py", runs_compare=[str(finished), str(unfinished)])
    assert not at.exception
    table = at.dataframe[1].value.set_index("setting")
    assert "validation" in table.index and "dataset" in table.index
    assert "—" in table.loc["validation accuracy"].tolist() and "None" not in table.to_string()


def test_transfer_gain_is_said_in_percentage_points():
    verdict = compare.transfer_verdict({"val_acc": 0.9, "n_val": 50}, {"val_acc": 0.23, "n_val": 50})
    assert "(+67 percentage points)" in verdict["text"] and "%)" not in verdict["text"]


def test_compare_figures_keep_title_and_legend_inside_the_figure():
    from tl_core import plots

    fig = plots.compare_figure({f"run {k}": [epoch(1, "probe", 0.9, 0.8)] for k in range(4)})
    layout = fig.layout
    assert layout.title.x == 0 and layout.title.yref == "container" and layout.margin.t >= 60
    plot_height = layout.height - layout.margin.t - layout.margin.b
    legend_top_px = -layout.legend.y * plot_height  # below the plot area
    assert legend_top_px + 4 * 24 <= layout.margin.b  # four legend rows fit in the bottom margin


# ---------------------------------------------------------------- augmentation: flips
def test_crop_augmentation_never_mirrors_and_light_does():
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    image[..., :32] = 255  # white on the left, black on the right

    def left_brighter(preset):
        out = augment.make_augment(preset, 64)(image.repeat(40, 1, 1, 1)).float()
        return (out[..., :16].mean(dim=(1, 2, 3)) > out[..., -16:].mean(dim=(1, 2, 3))).tolist()

    torch.manual_seed(0)
    assert all(left_brighter("crop"))
    assert not all(left_brighter("light"))
    assert set(augment.FLIPS) == {"light", "strong"} and "digits" in augment.FLIP_WARNING
    assert RunConfig(dataset_dir="d", augment="crop").augment == "crop"


def test_train_page_warns_that_flips_are_wrong_for_digits_and_text():
    dataset = small_dataset()
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root), image_size=64, image_size_backbone=EMBEDDED)
    assert not any("Flips mirror" in w.value for w in at.warning)
    at.radio(key="augment").set_value("light").run()
    assert any("Flips mirror the images" in w.value and "digits" in w.value for w in at.warning)
    at.radio(key="augment").set_value("crop").run()
    assert not at.exception and not any("Flips mirror" in w.value for w in at.warning)


# ---------------------------------------------------------------- Data: tabs stay, per-class sets get a name
def test_data_page_tabs_stay_where_the_user_is_and_a_per_class_dataset_takes_its_name():
    at = open_page("pages/2_Data.py")
    per_class = ":material/category: Images per class"
    at.session_state["data_source_tab"] = per_class
    at.button(key="add_class").click().run()
    assert not at.exception
    assert at.session_state["data_source_tab"] == per_class and len(at.session_state["manual_class_ids"]) == 3

    def nodes(node):
        yield node
        for child in getattr(node, "children", {}).values():
            yield from nodes(child)

    tab_block = next(node for node in nodes(at.main) if getattr(node, "type", None) == "tab_container")
    assert tab_block.proto.tab_container.default_tab_index == 1  # the browser shows the per-class tab again

    png = sorted((SAMPLE_DIR / "Bag").glob("*.png"))
    at.text_input(key="per_class_name").set_value("my bags and sandals")
    for class_id, name in enumerate(("Bag", "Sandal")):
        at.text_input(key=f"class_name_{class_id}").set_value(name.lower())
        files = sorted((SAMPLE_DIR / name).glob("*.png"))[:3]
        at.file_uploader(key=f"class_files_{class_id}").set_value([(f.name, f.read_bytes(), "image/png")
                                                                    for f in files])
    at.run()
    at.button(key="create_per_class").click().run()
    assert not at.exception and not at.error and png
    made = datasets.load_dataset(at.session_state["dataset_dir"])
    assert made.name == "my bags and sandals" and made.counts() == {"bag": 3, "sandal": 3}
    assert at.session_state["data_source_tab"] == per_class


# ---------------------------------------------------------------- the command line and the export
def test_console_prints_an_epoch_before_the_early_stop_it_caused(capsys):
    class FakeFit:
        stop_phase = False

        def __init__(self):
            self.callbacks = [EarlyStopping(1), ConsoleProgress()]

        def emit(self, event, **info):
            for callback in self.callbacks:
                callback(event, info, self)

    fit = FakeFit()
    for k, val_loss in enumerate((0.5, 0.6), start=1):
        fit.emit("epoch_end", epoch=k, phase="probe", train_loss=0.4, train_acc=0.9, val_loss=val_loss,
                 val_acc=0.8, seconds=0.1)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["epoch", "epoch", "early"]
    assert lines[1].split()[1] == "2"


def test_cli_and_app_default_backbone_have_one_name():
    from pages.ui import session
    from tl_core.config import defaults

    assert defaults()["backbone"] == session.DEFAULTS["backbone"] == EMBEDDED == "tf_efficientnet_lite0"


def test_exported_zip_and_its_files_are_readable_by_others(head_run, tmp_path):
    from tl_core.use.export import export_run

    report = export_run(head_run, "safetensors", out_dir=tmp_path / "bundle")
    zip_path = Path(report["zip"])
    assert stat.S_IMODE(zip_path.stat().st_mode) == 0o644
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in (tmp_path / "bundle").iterdir() if p.is_file())
    with zipfile.ZipFile(io.BytesIO(zip_path.read_bytes())) as archive:
        modes = {info.filename: stat.S_IMODE(info.external_attr >> 16) for info in archive.infolist()}
    assert modes and set(modes.values()) == {0o644}
