"""Comparing runs, on two real ones: a pretrained head-only run and its from-scratch twin trained for real
(64 px, 2 epochs); the settings table, the Runs page, and what transfer bought."""
import json
import shutil
from pathlib import Path

import pytest

from apptest_support import open_page
from tl_core.use import compare
from tl_core.ops import runs
from tl_core import worker
from tl_core.__main__ import main as cli
from tl_core.config import RunConfig
from tl_core.ops.runs import read_config

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


@pytest.fixture(scope="module")
def pair(small_sample, tmp_path_factory) -> tuple[Path, Path]:
    """(pretrained run, its from-scratch baseline), both trained for real in one workspace."""
    workspace = tmp_path_factory.mktemp("compare") / "workspace"
    pretrained = workspace / "runs" / "20260101-000000-efficientnet_lite0-pre"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_STUDIO_HOME", str(workspace))
        assert cli(["train", "--data", str(small_sample), "--freeze", "head", "--epochs", "2",
                    "--image-size", "64", "--run-dir", str(pretrained)]) == 0
        config = compare.scratch_config(read_config(pretrained), of_run=pretrained.name)
        baseline = runs.create_run(config, run_dir=workspace / "runs" / "20260101-000100-scratch")
        worker.run(baseline)
    return pretrained, baseline


@pytest.fixture
def pair_here(pair, _workspace) -> tuple[Path, Path]:
    """Both runs copied into this test's workspace, which the pages list."""
    return tuple(Path(shutil.copytree(run, _workspace / "runs" / run.name)) for run in pair)


def test_the_baseline_trains_every_layer_from_random_weights_and_is_found(pair):
    pretrained, baseline = pair
    config = runs.read_config_record(baseline)["config"]
    assert (config["weights"], config["freeze"], config["image_size"]) == ("none", "all", 64)
    assert config["parent_run"] == pretrained.name and config["epochs"] == 2
    assert compare.baseline_of(baseline) == pretrained.name
    assert runs.read_status(baseline)["state"] == "done"
    metrics = runs.read_metrics(baseline)
    assert metrics["trainable_params"] == metrics["total_params"]  # nothing frozen
    assert compare.find_baseline(pretrained, pretrained.parent.parent) == baseline
    assert compare.find_baseline(baseline, pretrained.parent.parent) is None


def test_settings_table_lists_both_runs_and_marks_what_differs(pair):
    rows = {row["setting"]: row for row in compare.settings_table(list(pair))}
    assert all(len(row["values"]) == 2 for row in rows.values())
    assert rows["weights"]["values"] == ["embedded", "none"] and rows["weights"]["differs"]
    assert rows["freeze"]["values"] == ["head", "all"] and rows["freeze"]["differs"]
    assert rows["image_size"]["values"] == [64, 64] and not rows["image_size"]["differs"]
    assert rows["lr"]["differs"] is False
    assert rows["val_acc"]["values"] == [runs.read_metrics(run)["val_acc"] for run in pair]


def verdict_shown(at, verdict: dict) -> bool:
    """The verdict's text, in the colour of its kind: success, warning or info."""
    messages = {"positive": at.success, "negative": at.warning, "neutral": at.info}[verdict["kind"]]
    return verdict["text"] in [message.value for message in messages]


def test_runs_page_puts_both_runs_side_by_side(pair_here):
    pretrained, baseline = pair_here
    at = open_page("pages/8_Runs.py")
    assert not at.exception and not at.error
    assert at.dataframe[0].value["run_id"].tolist() == [baseline.name, pretrained.name]
    assert sorted(at.multiselect(key="runs_compare").value) == sorted([str(pretrained), str(baseline)])
    table = at.dataframe[1].value.set_index("setting")
    run_columns = [column for column in table.columns if column != "differs"]  # one per run, named by it
    chosen = at.multiselect(key="runs_compare").value
    from tl_core.use.run_facts import run_name

    assert len(run_columns) == 2 and all(column.startswith(run_name(run)) for run, column in zip(chosen, run_columns))
    assert table.loc["weights", "differs"] and table.loc["plan", "differs"]
    assert not table.loc["learning rate", "differs"]
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert titles == ["Validation accuracy", "Validation loss", "Training loss"]
    legend = [trace["name"] for trace in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert len(legend) == 2 and any("random (from scratch), learns all" in name for name in legend)
    verdict = compare.transfer_verdict(*[runs.read_metrics(run) for run in pair_here])
    assert verdict_shown(at, verdict)

    at.multiselect(key="runs_compare").set_value([str(pretrained)]).run()
    assert any("two or more" in info.value for info in at.info)


def test_results_page_of_the_pretrained_run_says_what_transfer_bought(pair_here):
    pretrained, baseline = pair_here
    at = open_page("pages/5_Results.py", run_dir=str(pretrained))
    assert not at.exception
    verdict = compare.transfer_verdict(runs.read_metrics(pretrained), runs.read_metrics(baseline))
    assert verdict_shown(at, verdict)
    assert "start_baseline" not in [button.key for button in at.button]  # the baseline exists
    transfer = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert [trace["name"] for trace in transfer["data"]] == ["pretrained", "from scratch"]

    at.selectbox(key="results_run").set_value(str(baseline)).run()  # the baseline's own page says the same
    assert verdict_shown(at, verdict)
    n_val = runs.read_metrics(baseline)["n_val"]
    assert any(f"Validated on {n_val} images held out from training" in c.value for c in at.caption)


@pytest.mark.parametrize("pretrained_acc, scratch_acc, kind", [
    (0.90, 0.60, "positive"), (0.55, 0.80, "negative"), (0.71, 0.70, "neutral"), (0.70, 0.71, "neutral")])
def test_transfer_verdict_kinds(pretrained_acc, scratch_acc, kind):
    verdict = compare.transfer_verdict({"val_acc": pretrained_acc}, {"val_acc": scratch_acc})
    assert verdict["kind"] == kind
    assert verdict["gain"] == pytest.approx(pretrained_acc - scratch_acc)
    assert f"{pretrained_acc:.0%}" in verdict["text"] and f"{scratch_acc:.0%}" in verdict["text"]


def test_transfer_verdict_needs_a_gap_beyond_chance_on_few_images():
    # 75 % vs 62.5 % is one image in 8 either way: not a finding on 8 validation images each...
    few = compare.transfer_verdict({"val_acc": 0.75, "n_val": 8}, {"val_acc": 0.625, "n_val": 8})
    assert few["kind"] == "neutral" and few["margin"] > 0.125
    # ...but the same gap on 1,000 images each is.
    many = compare.transfer_verdict({"val_acc": 0.75, "n_val": 1000}, {"val_acc": 0.625, "n_val": 1000})
    assert many["kind"] == "positive"
    # An exact 2-point gap is not a win by rounding error.
    assert compare.transfer_verdict({"val_acc": 0.72}, {"val_acc": 0.70})["kind"] == "neutral"
