"""The run folder contract and RunConfig, without training."""
import json
import math

import pytest

from tl_core.callbacks import NanGuard, TrainingDiverged
from tl_core.config import ConfigError, RunConfig
from tl_core.runs import EventReader, create_run, list_runs, read_status, request_stop, summarize


def test_config_round_trips_and_rejects_bad_values_by_name():
    config = RunConfig(dataset_dir="d", freeze="top-3", epochs=4, lr=3e-4)
    assert RunConfig.from_json(config.to_json()) == config
    for bad, word in [(dict(epochs=0), "epochs"), (dict(freeze="top-"), "freeze"), (dict(augment="huge"), "augment"),
                      (dict(lr=-1), "lr"), (dict(image_size=8), "image_size")]:
        with pytest.raises(ConfigError, match=word):
            RunConfig(dataset_dir="d", **bad)
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_dict({"dataset_dir": "d", "epoch": 3})


def test_event_reader_returns_only_complete_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "fit_start"}\n{"event": "batch_')
    reader = EventReader(tmp_path)
    assert [e["event"] for e in reader.read_new()] == ["fit_start"]
    with path.open("a") as f:
        f.write('end", "loss": 1.0}\n')
    assert reader.read_new() == [{"event": "batch_end", "loss": 1.0}]
    assert reader.read_new() == []


def test_create_list_and_cancel_a_queued_run(_workspace):
    run_dir = create_run(RunConfig(dataset_dir="d", name="first"))
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["name"] == "first" and "torch" in record["versions"]
    assert read_status(run_dir)["state"] == "queued"
    assert list_runs() == [run_dir]
    request_stop(run_dir)
    assert read_status(run_dir)["state"] == "cancelled"
    assert summarize(run_dir)["state"] == "cancelled"


def test_nan_guard_stops_with_advice():
    with pytest.raises(TrainingDiverged, match="learning rate"):
        NanGuard()("batch_end", {"loss": math.nan, "epoch": 1, "step": 3}, None)
    NanGuard()("batch_end", {"loss": 0.5}, None)
