"""Issue 25: every figure a person reads about a finished run — on Results, on Runs, in the model card,
on the command line and in metrics.json — is the same fact, worked out once (tl_core.use.run_facts).

Three real runs on small real images (the bundled Fashion-MNIST sample, timm's tiny test model, no
pretrained weights): a head-only run held out by a split, a fine-tune whose probe was kept (fine-tuning
at a learning rate of 1 never beats it), and a head-only run validated by 5-fold cross-validation."""
import shutil

import pytest

from apptest_support import open_page, plain
from tl_core import worker
from tl_core.config import RunConfig
from tl_core.data.datasets import ingest_folder
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.ops import runs, words
from tl_core.use import run_facts
from tl_core.use.model_card import model_card

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")

TINY = dict(backbone="test_efficientnet", weights="none", image_size=64, batch_size=16)


def _dataset(tmp_path, per_class: int, name: str):
    """`per_class` images of 4 classes of the bundled sample, ingested as a dataset called `name`."""
    folder = tmp_path / name
    for label in ("Trouser", "Bag", "Sneaker", "Dress"):
        (folder / label).mkdir(parents=True)
        for image in sorted((SAMPLE_DIR / label).glob("*.png"))[:per_class]:
            shutil.copy(image, folder / label / image.name)
    return ingest_folder(folder, name=name)


def _train(config: RunConfig):
    run_dir = runs.create_run(config)
    worker.run(run_dir)
    assert runs.read_status(run_dir)["state"] == "done"
    return run_dir


def _head_holdout(tmp_path):
    # augmented, the head trains on images: a 20 % hold-out, not cross-validation
    dataset = _dataset(tmp_path, 20, "clothes held out")
    return _train(RunConfig(dataset_dir=str(dataset.root), freeze="head", augment="light", epochs=2, **TINY))


def _finetune_kept_probe(tmp_path):
    dataset = _dataset(tmp_path, 20, "clothes all layers")
    return _train(RunConfig(dataset_dir=str(dataset.root), freeze="all", lr=1.0, epochs=2, early_stopping=0,
                            warmup_epochs=0, **TINY))


def _cross_validated(tmp_path):
    dataset = _dataset(tmp_path, 8, "clothes cross-validated")
    return _train(RunConfig(dataset_dir=str(dataset.root), freeze="head", epochs=2, **TINY))


@pytest.mark.parametrize("make, validation, fine_tuned", [
    # a run on images whose probe is kept refits that head by cross-validation, as feature extraction does
    # (issue 24): its validation is then cross-validation; None: whichever the kept phase says
    (_head_holdout, None, False), (_finetune_kept_probe, "cv", False), (_cross_validated, "cv", False)],
    ids=["head-only", "fine-tune-kept-probe", "cross-validated"])
def test_the_same_facts_everywhere(tmp_path, make, validation, fine_tuned):
    run_dir = make(tmp_path)
    metrics = runs.read_metrics(run_dir)
    known = run_facts.facts(run_dir)
    if validation is None:
        validation = "cv" if metrics["kept"]["phase"] == "probe" else "holdout"

    # metrics.json: the facts are its figures, the wall the whole run's (claim to end) with its parts
    assert known["validation"] == validation == runs.validation_kind(metrics)
    assert known["fine_tuned"] is fine_tuned
    assert known["accuracy"] == metrics["val_acc"] and known["n_val"] == metrics["n_val"]
    assert known["learnt_params"] == metrics["kept"]["trainable_params"]
    assert known["wall_s"] == metrics["wall_s"] >= metrics["fit_wall_s"]
    assert sum(metrics["wall_parts"].values()) == pytest.approx(metrics["wall_s"], abs=0.05)
    assert known["dataset"].startswith("clothes")
    assert known["name"] == f"{run_facts.plan_name(runs.read_config(run_dir).freeze)} · {known['dataset']} · " \
                            f"{known['accuracy_words']}"
    if make is _finetune_kept_probe:  # the plan could train every layer; the model kept learnt its head only
        assert metrics["kept"]["phase"] == "probe" and known["learnt_params"] < metrics["trainable_params"]

    # Results
    at = open_page("pages/5_Results.py", run_dir=str(run_dir))
    tile = next(m for m in at.metric if m.label == "Accuracy")
    assert tile.value == known["accuracy_words"] and tile.delta == f"95 %: {known['interval_words']}"
    time_tile = next(m for m in at.metric if m.label == "Time")
    assert time_tile.value == words.format_seconds(known["wall_s"], short=True)
    assert known["wall_words"] in time_tile.proto.help and "features" in time_tile.proto.help
    captions = " ".join(plain(c.value) for c in at.caption)
    assert f"{known['learnt_params']:,} of {known['total_params']:,} parameters learnt" in captions
    assert known["learnt_words"] in captions
    assert ("instead of a hold-out" in captions) == (validation == "cv")
    assert words.plural(known["n_val"], "image") in captions
    assert any(option.startswith(known["name"]) for option in at.selectbox(key="results_run").options)

    # Runs
    at = open_page("pages/8_Runs.py")
    row = at.dataframe[0].value.set_index("run_id").loc[run_dir.name]
    assert row["name"] == known["name"] and row["learnt_params"] == known["learnt_params"]
    assert row["wall_s"] == words.format_seconds(known["wall_s"]) and row["validation"] == known["validation_words"]
    assert "None" not in at.dataframe[0].value.astype(str).to_numpy().ravel().tolist()

    # the model card
    card = model_card(run_dir, "onnx")
    assert f"# Model card: {known['name']}" in card
    assert f"Accuracy: {known['accuracy_words']} on {known['n_val']:,} images; 95% interval " \
           f"{known['interval_words']}" in card
    assert f"\"{known['dataset']}\"" in card and "?" not in card.split("## Data")[1].split("|")[0]
    assert known["images_words"][1:] in card
    assert ("fine-tuned" in card) == fine_tuned
    assert f"{known['learnt_params']:,} parameters" in card and known["wall_words"] in card
    if validation == "cv":
        assert "of it held out" not in card and "% held out" not in card and "cross-validation" in card
    assert "trained on ?" not in card and "trained on an unrecorded device" not in card


def test_the_command_line_says_the_same(small_sample, capsys):
    from tl_core.__main__ import main as cli

    assert cli(["train", "--data", str(small_sample), "--freeze", "head", "--epochs", "2", "--backbone",
                "test_efficientnet", "--weights", "none", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    run_dir = runs.list_runs()[0]
    known = run_facts.facts(run_dir)
    assert f"validation accuracy {known['accuracy_words']} (95 % interval {known['interval_words']})" in out
    assert known["images_words"] in out and f"{known['learnt_params']:,} parameters" in out
    assert f"time: {known['wall_words']}" in out and known["name"] in out


def test_a_run_renamed_on_results_is_called_so_everywhere(tmp_path):
    run_dir = _cross_validated(tmp_path)
    default = run_facts.run_name(run_dir)
    assert default.startswith("Head only · clothes cross-validated · ") and default.endswith("%")
    at = open_page("pages/5_Results.py", run_dir=str(run_dir))
    at.text_input(key=f"rename::{run_dir}").input("  my   best <b>shirt</b> model ").run()
    assert not at.exception
    assert runs.read_run_name(run_dir) == "my best <b>shirt</b> model"  # one line, kept as typed
    assert any(o.startswith("my best <b>shirt</b> model (done, ") for o in at.selectbox(key="results_run").options)
    assert run_facts.facts(run_dir)["name"] == "my best <b>shirt</b> model"
    assert "# Model card: my best <b>shirt</b> model" in model_card(run_dir, "onnx")
    at = open_page("pages/8_Runs.py")
    assert at.dataframe[0].value["name"].tolist() == ["my best <b>shirt</b> model"]
    runs.write_run_name(run_dir, " ")  # emptied: back to the default
    assert run_facts.run_name(run_dir) == default


def test_words_that_are_true():
    """Issue 25's grammar and wording, each as a person reads it."""
    from tl_core import plots
    from tl_core.fit.metrics import _calibration_words
    from tl_core.ops import glossary
    from tl_core.use import advice

    assert [words.plural(n, "image") for n in (0, 1, 2, 1500)] == ["0 images", "1 image", "2 images", "1,500 images"]
    assert words.plural(1, "mistake") == "1 mistake" and words.plural(5, "other class") == "5 other classes"
    assert words.format_seconds(0.3) == "< 1 s" and words.format_seconds(0) == "0 s"
    # every class equally thin is a small set, not one weaker class to handle with care
    classes = ["brick", "glass", "metal", "paper", "stone", "wood"]
    metrics = {"val_acc": 0.95, "classes": classes, "per_class": {name: {"support": 2} for name in classes}}
    said = advice.headline(metrics, [])
    assert said.startswith("Few validation images: every class has only 2 validation images") and "brick" not in said
    metrics["per_class"]["brick"] = {"support": 1}
    said = advice.headline(metrics, [])
    assert said.startswith("Few validation images: every class has at most 2 validation images")
    metrics["per_class"] = {**{name: {"support": 10} for name in classes}, "brick": {"support": 1}}
    assert advice.headline(metrics, []).startswith("Handle with care: brick has only 1 validation image:")
    assert "poorly calibrated" in _calibration_words(0.115, 0.9, 0.95, 120)
    assert "well calibrated" in _calibration_words(0.03, 0.9, 0.91, 120)
    # one measured candidate is a sentence, not a chart; the axes span whole layer groups and 0–100 %
    one = {"rows": [{"plan": "head", "groups": 0, "gain": 0.0, "gain_se": 0.0},
                    {"plan": "all", "groups": 8, "skipped": True}], "last_layer_acc": 0.99,
           "chosen": {"plan": "head"}}
    assert not plots.plan_is_chart(one)
    two = {**one, "rows": [one["rows"][0], {"plan": "top-1", "groups": 1, "gain": 0.01, "gain_se": 0.02}]}
    layout = plots.plan_figure(two).layout
    assert plots.plan_is_chart(two) and layout.xaxis.dtick == 1 and layout.yaxis.range[1] <= 1.0
    assert layout.xaxis.range[0] == -0.5
    for term in ("probe", "multi-layer features", "layer groups", "time budget", "ECE", "cross-validation"):
        assert len(glossary.explain(term)) > 60


def test_layers_counts_the_split_the_run_will_make_and_train_says_cv_replaces_the_hold_out(tmp_path):
    """Issue 25: 72 images of 6 classes read "58 + 14" on Layers where the run used 60 + 12."""
    from tl_core.data.datasets import stratified_split
    from tl_core.models import backbones

    folder = tmp_path / "six"
    for label in ("Trouser", "Bag", "Sneaker", "Dress", "Coat", "Shirt"):
        (folder / label).mkdir(parents=True)
        for image in sorted((SAMPLE_DIR / label).glob("*.png"))[:12]:
            shutil.copy(image, folder / label / image.name)
    dataset = ingest_folder(folder, name="six")
    train_idx, val_idx = stratified_split(dataset.labels(), 0.2, 0)
    assert (len(train_idx), len(val_idx)) == (60, 12)
    at = open_page("pages/3_Layers.py", dataset_dir=str(dataset.root), image_size=64,
                   image_size_backbone=backbones.EMBEDDED_MODEL)
    at.radio(key="freeze_preset").set_value("all").run()
    tile = next(m for m in at.metric if m.label == "Estimated time per epoch")
    assert tile.delta.startswith("60 + 12 images at 64 px") and " 0 s" not in f" {tile.value}"
    at.radio(key="freeze_preset").set_value("head").run()
    at.switch_page("pages/4_Train.py").run()
    assert not at.exception
    said = [plain(i.value) for i in at.info if "instead of the 20% hold-out" in plain(i.value)]
    assert said and said[0].startswith("Validation: 5-fold cross-validation")
