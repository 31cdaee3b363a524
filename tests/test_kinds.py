"""Task kinds are the seam: a kind registered from outside the engine is trained by the same worker (claim,
status, its plan, its fit told the standard listeners, its check of the finished run) and answered by the
same command line, with no branch on its name anywhere; the built-in kinds resolve old runs right."""
import json
import sys
import types
from pathlib import Path

import pytest

from tl_core import kinds
from tl_core import worker
from tl_core.config import RunConfig
from tl_core.ops.runs import create_run, read_events, read_metrics, read_status, record_facts, write_metrics


def _toy_fit(config, run_dir, emit, strategy=None):
    """Counts the images of its folder: the whole 'model'."""
    emit("fit_start", epochs=1, classes=[])
    emit("epoch_end", epoch=1, phase="count", val_acc=1.0, val_loss=0.0)
    metrics = {"val_acc": 1.0, "val_loss": 0.0, "images": len(list(Path(config.dataset_dir).rglob("*.png"))),
               "planned": config.name}
    write_metrics(run_dir, metrics)
    emit("fit_end", val_acc=1.0, val_loss=0.0)
    return metrics


def _toy_plan(config, run_dir, notice):
    notice("toy plan: named the run")
    return config.replace(name="planned by the toy kind")


def _toy_after_fit(config, run_dir):
    record_facts(run_dir, checked=True)


class _ToyPredictor:
    def __init__(self, run_dir):
        self.run_dir = run_dir

    def predict(self, image):
        return {"width": image.width}


@pytest.fixture
def toy_kind():
    module = types.ModuleType("toy_kind_for_tests")
    module.fit, module.plan, module.after_fit, module.Predictor = _toy_fit, _toy_plan, _toy_after_fit, _ToyPredictor
    module.ingest = lambda folder: Path(folder)
    module.evaluate = lambda run_dir, data_dir: {"evaluated": str(data_dir)}
    module.export = lambda run_dir, fmt, out_dir: {"format": fmt}
    sys.modules[module.__name__] = module
    kind = kinds.register(kinds.TaskKind(
        name="toy", title="Count images", summary="a kind made by a test", layout="any folder of PNGs",
        fit="toy_kind_for_tests:fit", plan="toy_kind_for_tests:plan", after_fit="toy_kind_for_tests:after_fit",
        ingest="toy_kind_for_tests:ingest", evaluate="toy_kind_for_tests:evaluate",
        predictor="toy_kind_for_tests:Predictor", export="toy_kind_for_tests:export"))
    yield kind
    kinds._KINDS.pop("toy", None)
    sys.modules.pop(module.__name__, None)


def test_a_registered_kind_is_trained_by_the_worker_with_its_plan_and_its_check(toy_kind, small_sample, _workspace):
    run_dir = create_run(RunConfig(dataset_dir=str(small_sample), task="toy"))
    metrics = worker.run(run_dir)
    assert metrics["images"] == 32 and metrics["planned"] == "planned by the toy kind"
    assert read_status(run_dir)["state"] == "done" and read_metrics(run_dir)["images"] == 32
    events = read_events(run_dir)
    assert [e["event"] for e in events] == ["notice", "fit_start", "epoch_end", "fit_end"]
    assert events[0]["message"] == "toy plan: named the run"
    assert json.loads((run_dir / "facts.json").read_text())["checked"] is True


def test_the_command_line_answers_through_the_registered_kind(toy_kind, small_sample, _workspace, capsys):
    from tl_core.__main__ import main as cli

    run_dir = create_run(RunConfig(dataset_dir=str(small_sample), task="toy"))
    worker.run(run_dir)
    image = next(small_sample.rglob("*.png"))
    assert cli(["predict", str(run_dir), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"image": str(image), "width": 28}
    assert cli(["evaluate", str(run_dir), "--data", str(small_sample)]) == 0
    assert json.loads(capsys.readouterr().out) == {"evaluated": str(small_sample)}
    assert cli(["export", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == {"format": "onnx"}


def test_old_runs_resolve_to_the_built_in_kinds(small_sample, tmp_path, _workspace):
    """A config from before `task` existed is a classifier; a classify run on a labels table is multi-task."""
    from tl_core.data.datasets import ingest_folder
    from tl_core.data.datasets.labels_table import ingest_labelled_folder
    from tl_core.data.sample_data import write_fashion_task_table
    import shutil

    plain = ingest_folder(small_sample)
    old = {k: v for k, v in RunConfig(dataset_dir=str(plain.root)).to_dict().items() if k != "task"}
    assert kinds.kind_of(RunConfig.from_dict(old)).name == "classify"
    data = tmp_path / "data"
    shutil.copytree(small_sample, data)
    write_fashion_task_table(data)
    table = ingest_labelled_folder(data, data / "labels.csv")
    assert kinds.kind_of(RunConfig(dataset_dir=str(table.root))).name == "multitask"
    assert {kind.name for kind in kinds.all_kinds()} >= {"classify", "multitask"}


def test_old_configs_lineage_in_extra_is_read_into_typed_fields():
    config = RunConfig.from_dict({"dataset_dir": "d", "weights": "none",
                                  "extra": {"baseline_of": "run-a", "grown": True, "task_weights": {"tags": 0.5}}})
    assert (config.parent_run, config.grown, config.task_weights) == ("run-a", True, {"tags": 0.5})
    assert "extra" not in config.to_dict() and RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown setting"):
        RunConfig.from_dict({"dataset_dir": "d", "extra": {"mystery": 1}})
