"""The Auto plan: candidates measured on the user's images, the simplest kept unless another wins clearly."""
import json

import pytest

from tl_core.plan import auto_plan
from tl_core.config import RunConfig
from tl_core.data.datasets import ingest_folder
from tl_core.ops.runs import RunFolder, create_run, read_metrics, write_status
from tl_core import plots
from tl_core import worker


def _head(gain=0.0, features="last"):
    return {"plan": "head", "groups": 0, "gain": gain, "gain_se": 0.02, "features": features}


def _tuned(plan, gain, se=0.03):
    return {"plan": plan, "groups": int(plan[4:]) if plan.startswith("top-") else 8, "gain": gain, "gain_se": se}


def test_a_fine_tune_that_gains_clearly_is_kept():
    chosen, words = auto_plan._choose([_head(), _tuned("top-1", 0.01), _tuned("top-2", 0.08)])
    assert chosen["plan"] == "top-2" and "kept fine-tuning top-2" in words and "top-2 +8.0" in words


def test_gains_within_the_noise_keep_the_simplest_plan():
    chosen, words = auto_plan._choose([_head(), _tuned("top-1", 0.02), _tuned("top-2", 0.025)])
    assert chosen["plan"] == "head" and words.startswith("kept feature extraction")


def test_multi_layer_features_raise_the_bar_for_fine_tuning():
    rows = [_head(gain=0.05, features="multi-layer"), _tuned("top-2", 0.06), _tuned("all", 0.12, se=0.03)]
    chosen, _ = auto_plan._choose(rows)
    assert chosen["plan"] == "all"  # +12 beats multi-layer's +5 by more than the noise; top-2's +6 does not
    chosen, words = auto_plan._choose(rows[:2])
    assert chosen["plan"] == "head" and "multi-layer features were kept for their lower validation loss; in accuracy they gained +5.0 points" in words


def test_skipped_candidates_are_said_and_never_chosen():
    skipped = {"plan": "all", "groups": 8, "skipped": True, "estimate_s": 500.0,
               "why": "about 500 s, beyond what is left of the budget"}
    chosen, words = auto_plan._choose([_head(), skipped])
    assert chosen["plan"] == "head" and "no fine-tuning candidate was measured (beyond the time budget: all)" in words
    assert "not compared with fine-tuning" in words


def test_an_auto_run_measures_its_candidates_and_trains_the_plan_kept(sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    dataset = ingest_folder(sample_dir)
    config = RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet", weights="none", image_size=64,
                       epochs=3, auto_budget=100)  # a budget that lets every candidate run on the tiny model
    assert config.freeze == "auto"
    run_dir = create_run(config)
    metrics = worker.run(run_dir)
    plan = json.loads(RunFolder(run_dir).plan.read_text())
    plans = [row["plan"] for row in plan["rows"]]
    assert plans[0] == "head" and "top-1" in plans and plans[-1] == "all"
    for row in plan["rows"]:
        if not row.get("skipped"):
            candidate = RunFolder(run_dir).candidates / row["plan"]
            assert read_metrics(candidate)["val_acc"] == pytest.approx(row["val_acc"])
            assert (candidate / "model.safetensors").is_file()
    measured = [r for r in plan["rows"] if not r.get("skipped")]
    assert len(measured) >= 2 and all("gain" in r for r in measured)
    assert plan["chosen"]["plan"] in plans and metrics["kept"]["plan"] in (plan["chosen"]["plan"], "head")
    notices = [json.loads(line) for line in RunFolder(run_dir).events.read_text().splitlines()]
    assert any(e.get("phase") == "plan" and e["message"].startswith("Auto plan: kept") for e in notices)
    # the live view's bar moves while the plan measures (issue 25: an empty bar for 30 s)
    measuring = [e for e in notices if e.get("phase") == "plan" and isinstance(e.get("fraction"), float)]
    assert measuring and all(0.0 <= e["fraction"] <= 1.0 for e in measuring)
    assert any(e["fraction"] == 1.0 for e in measuring)
    # the wall is the whole run's, measuring included, and its parts add up to it
    assert metrics["wall_parts"]["measuring"] > 0 and metrics["wall_s"] > metrics["fit_wall_s"]
    assert sum(metrics["wall_parts"].values()) == pytest.approx(metrics["wall_s"], abs=0.05)
    assert read_metrics(run_dir)["wall_s"] == metrics["wall_s"]
    figure = plots.plan_figure(plan)
    assert list(figure.data[0].x) == [r["groups"] for r in measured]
    assert list(figure.data[0].marker.symbol).count("star") == 1
    found = auto_plan.latest_measurement(str(dataset.root), "test_efficientnet")
    assert found["run"] == str(run_dir) and found["chosen"] == plan["chosen"]
    assert auto_plan.latest_measurement(str(dataset.root), "resnet18") is None
    write_status(run_dir, state="failed", error="for the test")  # the Layers page's next rerun sees it at once
    assert auto_plan.latest_measurement(str(dataset.root), "test_efficientnet") is None
    write_status(run_dir, state="done", error=None)
    assert auto_plan.latest_measurement(str(dataset.root), "test_efficientnet")["run"] == str(run_dir)


def test_progress_says_what_the_auto_plan_measures():
    from tl_core.ops.words import progress

    events = [{"event": "notice", "phase": "plan", "message": "Auto plan: measuring fine-tuning with top-1"}]
    assert progress(events, {"state": "running"}) == (0.0, "Auto plan: measuring fine-tuning with top-1")
    events.append({"event": "notice", "phase": "plan", "message": "Auto plan, measuring feature extraction: "
                   "features of 30 of 120 images", "fraction": 0.25, "eta_s": 9.0})
    assert progress(events, {"state": "running"}) == (0.25, "Auto plan, measuring feature extraction: features of "
                                                            "30 of 120 images · about 9 s left")


def test_too_few_images_to_validate_a_fine_tune_measure_only_feature_extraction(small_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    dataset = ingest_folder(small_sample)  # 32 images: 6 would be held out
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet", weights="none",
                                   image_size=64, epochs=2, auto_budget=100))
    metrics = worker.run(run_dir)
    plan = json.loads(RunFolder(run_dir).plan.read_text())
    assert [r["plan"] for r in plan["rows"] if not r.get("skipped")] == ["head"]
    assert "too few images to measure a fine-tune: 6 would be held out" in plan["words"]
    assert metrics["kept"]["plan"] == "head"
