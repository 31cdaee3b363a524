"""The run folder contract and RunConfig, without training."""
import json
import math

import pytest

from tl_core.fit.callbacks import NanGuard, TrainingDiverged
from tl_core.config import ConfigError, RunConfig
from tl_core.ops import runs, storage
from tl_core.ops.runs import EventReader, create_run, list_runs, read_status, request_stop
from tl_core.ops.words import summarize


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


# ---------------------------------------------------------------- damaged files, locks, full disks

@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"), (b'{"state": "queu', "cut short (truncated JSON)"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text (byte 0)"), (b"[1, 2]", "not a JSON object"),
    (b'{"state": 3}', "unknown state '3'"), (b"{\"state\": \"done\"} tail", "not valid JSON (Extra data at line 1"),
])
def test_a_damaged_status_is_a_state_with_the_reason(_workspace, content, reason):
    run_dir = create_run(RunConfig(dataset_dir="d"))
    (run_dir / "status.json").write_bytes(content)
    status = read_status(run_dir)
    assert status["state"] == "damaged" and status["error"].startswith("status.json: ")
    assert reason in status["error"]
    row = summarize(run_dir)
    assert row["state"] == "damaged" and reason in row["damaged"]
    runs.write_status(run_dir, state="failed", error="x")  # a writer replaces the damaged file
    assert read_status(run_dir)["state"] == "failed" and runs.damage(run_dir) == []


def test_damaged_config_metrics_and_event_lines_are_reported_not_raised(_workspace):
    run_dir = create_run(RunConfig(dataset_dir="d"))
    (run_dir / "config.json").write_bytes(b'{"config": {"backbone": ')
    (run_dir / "metrics.json").write_text('{"val_acc": "high", "classes": []}')
    (run_dir / "events.jsonl").write_text('{"event": "fit_start"}\n\x00\x01garbage\n[1]\n{"event": "epoch_end", '
                                          '"epoch": "one"}\n{"event": "fit_end"}\n{"event": "cu')
    assert runs.read_config_record(run_dir) == {} and runs.read_metrics(run_dir) is None
    assert [e["event"] for e in runs.read_events(run_dir)] == ["fit_start", "fit_end"]
    problems = runs.damage(run_dir)
    assert problems[0] == "config.json: cut short (truncated JSON)"
    assert problems[1] == "metrics.json: 'val_acc' is not a number"
    assert problems[2].startswith("events.jsonl: line 2 skipped, not valid JSON (Expecting value")
    assert "events.jsonl: line 3 skipped, not an event" in problems[3]
    assert "line 4 skipped, epoch_end whose 'epoch' is not a number" in problems[4]
    assert problems[-1] == "events.jsonl: the last line is cut short"
    assert summarize(run_dir)["state"] == "queued"  # its status is fine: it is still a queued run


def test_locks_say_whether_a_run_is_trained_and_a_live_run_cannot_be_deleted(_workspace):
    run_dir = create_run(RunConfig(dataset_dir="d"))
    lock = run_dir / runs.LOCK_FILE
    assert lock.exists() and not runs.lock_held(lock)
    fd = runs.try_lock(lock)
    assert fd is not None and runs.lock_held(lock) and runs.try_lock(lock) is None
    with pytest.raises(ValueError, match="a worker is training it; stop it first"):
        runs.delete_run(run_dir)
    request_stop(run_dir)  # claimed, so not cancelled at once: the worker sees STOP
    assert read_status(run_dir)["state"] == "queued"
    runs.unlock(fd)
    runs.delete_run(run_dir)
    assert not run_dir.exists() and list_runs() == []
    with pytest.raises(FileNotFoundError):  # a late status write never brings a deleted run back
        runs.write_status(run_dir, state="failed")
    assert not run_dir.exists()


def test_a_full_disk_names_the_path_the_size_and_the_fix(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd):  # where a full disk often shows first: the data was buffered, the blocks are not there
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "runs" / "r" / "status.json"
    with pytest.raises(storage.StorageFull) as error:
        storage.atomic_write_bytes(target, b"x" * 5000)
    monkeypatch.undo()
    message = str(error.value)
    assert message.startswith(f"{target}: the disk is full (5.0 KB needed, ") and "free on /" in message
    assert "TL_STUDIO_HOME" in message and error.value.errno == errno.ENOSPC
    assert not target.exists() and list(target.parent.iterdir()) == []  # no temporary file left behind


def test_read_json_names_the_damage(tmp_path):
    path = tmp_path / "x.json"
    assert storage.read_json(path, {"default": 1}) == {"default": 1}
    for content, reason in ((b"", "empty file"), (b"  \n", "holds only blank space"), (b'{"a": [1,', "cut short")):
        path.write_bytes(content)
        with pytest.raises(storage.DamagedFile, match=f"^{path}: {reason}"):
            storage.read_json(path)


def test_the_cli_the_app_and_runconfig_agree_on_every_setting():
    """Defaults, types and choices live in RunConfig's fields; the CLI and the app's start values follow them."""
    import argparse

    from tl_core.__main__ import _add_settings
    from tl_core.config import RunConfig, defaults, settings

    parser = argparse.ArgumentParser()
    _add_settings(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == set(settings())
    for name, setting in settings().items():
        assert actions[name].default == setting.default, name
        assert tuple(actions[name].choices or ()) == setting.metadata["choices"], name
        assert actions[name].help == setting.metadata["help"]
    config = RunConfig(dataset_dir="d", **vars(parser.parse_args([])))  # the CLI's defaults make a valid run
    assert config == RunConfig(dataset_dir="d")

    from pages.ui import session

    shared = set(session.DEFAULTS) & set(defaults())
    assert {"freeze", "bn_policy", "epochs", "batch_size", "augment", "early_stopping", "val_fraction"} <= shared
    for name in shared - {"lr", "image_size"}:  # the app resolves these two from the plan and the backbone
        assert session.DEFAULTS[name] == defaults()[name], name
    assert session.DEFAULTS["lr"] == RunConfig(dataset_dir="d").lr


def test_progress_of_a_run_from_its_events():
    from tl_core.ops.words import format_seconds, progress

    assert progress([], {"state": "running"})[0] == 0.0
    events = [{"event": "fit_start", "epochs": 10}]
    events += [{"event": "batch_end", "phase": "features", "done": 64, "total": 256}]
    assert progress(events, {"state": "running"}) == (0.25, "Passing every image through the frozen backbone once: "
                                                             "64 of 256")
    events += [{"event": "epoch_end", "phase": "finetune", "epoch": k, "seconds": 2.0, "images_per_s": 50.0}
               for k in (1, 2, 3)]
    events += [{"event": "batch_end", "phase": "finetune", "epoch": 4, "batch": 1, "batches": 2, "images_per_s": 40.0}]
    fraction, text = progress(events, {"state": "running"})
    assert fraction == pytest.approx(0.35)
    assert text == "Epoch 3 of 10 · about 13 s left · 40 images/s"  # 6.5 epochs of 2 s left
    events.insert(-1, {"event": "epoch_end", "epoch": "garbage"})  # a damaged line changes nothing
    assert progress(events, {"state": "running"}) == (fraction, text)
    assert [format_seconds(s) for s in (None, 42, 185, 3720)] == ["–", "42 s", "3 min 05 s", "1 h 02 min"]


def test_eta_after_the_head_epochs_is_timed_by_the_fine_tune_not_the_probe():
    """Issue 25: "about 0 s left" at epoch 5 of 15, right after the fast head epochs, then a jump."""
    from tl_core.ops.words import progress

    events = [{"event": "fit_start", "epochs": 15, "probe_epochs": 5, "t": 0.0},
              {"event": "phase_start", "phase": "probe", "epochs": 5, "t": 0.0}]
    events += [{"event": "epoch_end", "phase": "probe", "epoch": k, "seconds": 0.01, "images_per_s": 8004.0}
               for k in range(1, 6)]
    assert "known once fine-tuning starts" in progress(events, {"state": "running"})[1]
    events += [{"event": "phase_start", "phase": "finetune", "epochs": 10, "epoch": 5, "t": 100.0},
               {"event": "batch_end", "phase": "finetune", "epoch": 6, "batch": 1, "batches": 4, "t": 102.0,
                "images_per_s": 30.0}]
    text = progress(events, {"state": "running"})[1]
    # a quarter of an epoch took 2 s: 8 s an epoch, 9.75 epochs left
    assert "about 1 min 18 s left · 30 images/s" in text and "8,004" not in text
    events += [{"event": "epoch_end", "phase": "finetune", "epoch": 6, "seconds": 8.0, "images_per_s": 30.0, "t": 108.0}]
    assert "about 1 min 12 s left" in progress(events, {"state": "running"})[1]


def test_validation_is_recorded_as_data(small_sample):
    """How a run validated is data in metrics.json, not prose to parse; older runs' words still read."""
    from tl_core import worker
    from tl_core.data.datasets import ingest_folder
    from tl_core.ops.runs import read_metrics, validation_kind

    run_dir = create_run(RunConfig(dataset_dir=str(ingest_folder(small_sample).root), epochs=1, image_size=64))
    worker.run(run_dir)
    metrics = read_metrics(run_dir)
    assert metrics["validation_method"] == {"kind": "cv", "folds": 5, "seed": 0}
    assert validation_kind(metrics) == "cv"
    assert validation_kind({"validation": "20% held out"}) == "holdout"
    assert validation_kind({"validation": "separate validation set"}) == "separate"
