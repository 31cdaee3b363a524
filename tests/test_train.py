"""The fit loop and the run folder, on the bundled Fashion-MNIST sample with the embedded EfficientNet-Lite0."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tl_core.ops import runs
from tl_core import worker
from tl_core.fit import loop
from tl_core.config import RunConfig
from tl_core.data.datasets import ingest_folder
from tl_core.ops.jobs import JobManager
from tl_core.ops.runs import create_run, read_events, read_status

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ["config.json", "status.json", "events.jsonl", "metrics.json", "predictions.csv",
            "model.safetensors", "labels.json", "preprocess.json"]


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tl_core", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_train_evaluate_predict(small_sample, fashion_test_dir, tmp_path):
    run_dir = tmp_path / "run"
    done = _cli("train", "--data", small_sample, "--freeze", "head", "--epochs", 3, "--image-size", 128,
                "--run-dir", run_dir)
    assert done.returncode == 0, done.stderr
    assert str(run_dir) in done.stdout.splitlines()[-1]
    for name in CONTRACT:
        assert (run_dir / name).exists(), name
    assert read_status(run_dir)["state"] == "done"
    events = read_events(run_dir)
    assert events[0]["event"] == "fit_start" and events[-1]["event"] == "fit_end"
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1, 2, 3]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Trouser, Bag, Sneaker, Dress are far apart: ImageNet features separate them easily.
    assert metrics["val_acc"] >= 0.75
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert len(rows) == metrics["n_val"] == sum(sum(r) for r in metrics["confusion"])
    assert sum(r["label"] == r["predicted"] for r in rows) / len(rows) == pytest.approx(metrics["val_acc"])
    record = runs.read_config_record(run_dir)  # config.json, written once, with the facts learnt while training
    assert record["device"].startswith("CPU") and record["versions"]["torch"]
    assert "device" not in json.loads((run_dir / "config.json").read_text())

    evaluated = _cli("evaluate", run_dir, "--data", fashion_test_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["images"] == 40  # 10 held-out test images for each of the 4 classes; 6 classes skipped
    assert len(report["skipped"]) == 6
    assert report["accuracy"] >= 0.7

    images = sorted((fashion_test_dir / "Trouser").glob("*.png"))[:2]
    predicted = _cli("predict", run_dir, *images, "--json")
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    for line in lines:
        probs = [t["prob"] for t in line["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert line["top"][0]["label"] == "Trouser"


def test_finetune_trains_only_the_chosen_groups(small_sample):
    dataset = ingest_folder(small_sample)
    config = RunConfig(dataset_dir=str(dataset.root), freeze="top-1", augment="light", epochs=2,
                       image_size=96, batch_size=16, early_stopping=0)
    run_dir = create_run(config)
    metrics = worker.run(run_dir)
    events = read_events(run_dir)
    phases = [e["phase"] for e in events if e["event"] == "epoch_end"]
    # When fine-tuning did not beat the probe, the kept probe is refitted on every image (issue 24), after it.
    refitted = metrics["kept"]["phase"] == "probe"
    assert [e["phase"] for e in events if e["event"] == "phase_start"] == ["probe", "finetune"] + ["probe"] * refitted
    assert phases == (["probe"] * loop.PROBE_EPOCHS_BEFORE_FINETUNE + ["finetune"] * 2
                      + ["probe"] * loop.Fit.REFIT_PROBE_EPOCHS * refitted)
    assert any(e["event"] == "batch_end" and e.get("phase") == "finetune" for e in events)
    assert metrics["trainable_groups"][-1] == "head" and len(metrics["trainable_groups"]) == 2

    from tl_core.models import backbones, layers

    pretrained = backbones.create_model("efficientnet_lite0", 4, weights="embedded").state_dict()
    trained = load_file(run_dir / "model.safetensors")
    groups = layers.layer_groups(backbones.create_model("efficientnet_lite0", 4, weights="none"))
    frozen = [n for g in groups if g.name not in metrics["trainable_groups"] for n in g.param_names]
    assert frozen and all(torch.equal(trained[n], pretrained[n]) for n in frozen)
    if not refitted:  # the best weights come from fine-tuning
        below_head = [n for n in groups[-2].param_names if n.endswith("weight")]
        assert any(not torch.equal(trained[n], pretrained[n]) for n in below_head)


def _wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _long_config(small_sample):
    dataset = ingest_folder(small_sample)
    return RunConfig(dataset_dir=str(dataset.root), freeze="all", probe_first=False, epochs=50,
                     image_size=64, batch_size=4, early_stopping=0)


def _saw_batch(run_dir):
    return any(e["event"] == "batch_end" and e.get("phase") == "finetune" for e in read_events(run_dir))


def test_queue_is_fifo_and_stop_file_cancels_within_a_batch(small_sample, _workspace):
    jobs = JobManager(_workspace, slots=1, poll_s=0.2, background=False)
    config = _long_config(small_sample)
    first, second = jobs.submit(config), jobs.submit(config)
    assert read_status(first)["state"] == "running"
    assert read_status(second)["state"] == "queued" and jobs.queue_position(second) == 1
    _wait_for(lambda: _saw_batch(first), what="the first batch")

    # Timed here, not by the STOP file's mtime: file times come from the kernel's coarse clock,
    # up to a tick (~4 ms) behind, and event times are rounded to 1 ms.
    stop_time = time.time()
    jobs.cancel(first)
    status = jobs.wait(first, timeout=60)
    assert status["state"] == "cancelled"
    events = read_events(first)
    assert events[-1]["event"] == "cancelled"
    # "within one batch": after the stop was asked for, at most one more batch finished.
    assert sum(e["event"] == "batch_end" and e["t"] > stop_time + 0.001 for e in events) <= 1

    # The slot frees when the cancelled worker has exited (its memory released); then the queued run starts.
    _wait_for(lambda: jobs.tick() or read_status(second)["state"] == "running", timeout=30, what="the second run")
    jobs.cancel(second)
    assert jobs.wait(second, timeout=60)["state"] == "cancelled"


def test_a_killed_worker_is_marked_failed_with_the_reason(small_sample, _workspace):
    jobs = JobManager(_workspace, slots=1, poll_s=0.2, background=False)
    run_dir = jobs.submit(_long_config(small_sample))
    _wait_for(lambda: _saw_batch(run_dir), what="the first batch")
    os.kill(read_status(run_dir)["pid"], signal.SIGKILL)
    status = jobs.wait(run_dir, timeout=30)
    assert status["state"] == "failed"
    assert "SIGKILL" in status["error"]


def test_an_orphaned_running_run_is_marked_failed(small_sample, _workspace):
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from tl_core.ops.runs import write_status

    write_status(run_dir, state="running", pid=dead.pid)
    JobManager(_workspace, background=False).tick()  # a new server finds the run
    status = read_status(run_dir)
    assert status["state"] == "failed" and "gone" in status["error"]


def test_a_bad_config_fails_with_a_clear_status(small_sample):
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="no_such_group"))
    with pytest.raises(ValueError):
        worker.run(run_dir)
    status = read_status(run_dir)
    assert status["state"] == "failed" and "no_such_group" in status["error"]
    assert read_events(run_dir)[-1]["event"] == "error"


def test_tl_core_never_imports_streamlit():
    code = ("import sys, tl_core.worker, tl_core.ops.jobs, tl_core.use.predict, tl_core.plots, tl_core.__main__;"
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    for path in (ROOT / "tl_core").rglob("*.py"):
        assert "import streamlit" not in path.read_text(), path


def _epoch_ends(events, phase):
    return [e for e in events if e["event"] == "epoch_end" and e["phase"] == phase]


def test_finetune_starts_where_the_probe_ended(small_sample):
    """The switch from probe to fine-tune keeps what the probe learnt: no jump in the training loss.
    (Before BatchNorm kept its pretrained statistics and the folded head was bounded, the first
    fine-tune batch of this run logged 20-260× the probe's last loss.)"""
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="top-2", epochs=2, image_size=96,
                                   batch_size=8, early_stopping=0))
    worker.run(run_dir)
    events = read_events(run_dir)
    probe_last = _epoch_ends(events, "probe")[-1]["train_loss"]
    first_batch = next(e for e in events if e["event"] == "batch_end" and e.get("phase") == "finetune")
    first_epoch = _epoch_ends(events, "finetune")[0]
    limit = 3 * probe_last + 0.05
    assert first_batch["loss"] <= limit, (first_batch["loss"], probe_last)
    assert first_epoch["train_loss"] <= limit, (first_epoch["train_loss"], probe_last)
    assert not [e for e in events if e.get("kind") == "diverged"]


def test_full_finetune_learns_on_real_images(sample_dir):
    """Every layer trains on 240 real images: the training loss falls and validation stays with the probe's."""
    dataset = ingest_folder(sample_dir)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="all", epochs=4, image_size=96,
                                   early_stopping=0))
    metrics = worker.run(run_dir)
    events = read_events(run_dir)
    probe, tuned = _epoch_ends(events, "probe"), _epoch_ends(events, "finetune")
    assert len(tuned) == 4
    assert tuned[-1]["train_loss"] < tuned[0]["train_loss"]
    assert max(e["train_loss"] for e in tuned) < 3 * probe[-1]["train_loss"] + 0.05
    best_probe = max(e["val_acc"] for e in probe)
    assert tuned[-1]["val_acc"] >= best_probe - 0.05, (tuned[-1]["val_acc"], best_probe)
    kept = metrics["kept"]
    assert kept["epoch"] == metrics["best_epoch"]
    assert kept["plan"] == ("all" if kept["phase"] == "finetune" else "head")


def test_a_diverging_finetune_restarts_lower_and_says_which_model_is_kept(small_sample):
    """At a learning rate of 1 every layer blows up: the guard restores the probe's weights, retries at a
    10× lower rate, and the run says in words which weights it kept and why."""
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="all", lr=1.0, epochs=2,
                                   image_size=64, batch_size=8, early_stopping=0, warmup_epochs=0))
    metrics = worker.run(run_dir)
    assert read_status(run_dir)["state"] == "done"
    events = read_events(run_dir)
    diverged = [e for e in events if e["event"] == "notice" and e.get("kind") == "diverged"]
    assert diverged and "restarted from the probe's weights at a 10× lower learning rate" in diverged[0]["message"]
    restarts = [e for e in events if e["event"] == "phase_start" and e["phase"] == "finetune"]
    assert len(restarts) == 2 and restarts[1]["lr"] == pytest.approx(restarts[0]["lr"] / 10)
    kept = metrics["kept"]
    if kept["phase"] == "probe":
        assert kept["plan"] == "head" and "probe" in kept["reason"]
        assert kept["trainable_params"] < metrics["trainable_params"]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["kept"] == kept
    from tl_core.use.model_card import model_card

    card = model_card(run_dir, "onnx")
    assert f"Weights kept: epoch {kept['epoch']} ({kept['phase']} phase), plan `{kept['plan']}`" in card
    if kept["reason"]:
        assert kept["reason"] in card


def test_the_divergence_guard_limits(small_sample):
    from types import SimpleNamespace

    from tl_core.fit.callbacks import DivergenceGuard, PhaseDiverged

    guard = DivergenceGuard(over_chance=2.0, over_probe=4.0)
    fit = SimpleNamespace(classes=["a", "b", "c", "d"])
    guard("phase_start", {"phase": "finetune", "reference_loss": 0.1}, fit)
    guard("batch_end", {"phase": "finetune", "epoch": 6, "loss": 2.7}, fit)  # below 2 ln 4 = 2.77
    for loss in (2.8, float("nan"), float("inf")):
        with pytest.raises(PhaseDiverged):
            guard("batch_end", {"phase": "finetune", "epoch": 6, "loss": loss}, fit)
    guard("phase_start", {"phase": "finetune", "reference_loss": 1.0}, fit)
    guard("batch_end", {"phase": "finetune", "epoch": 6, "loss": 3.9}, fit)  # below 4 × the probe's 1.0


def test_a_class_of_one_image_trains_head_only(small_sample, tmp_path):
    """A class with a single image is a warning at ingest, not a refusal, and the head still trains."""
    import shutil

    data = tmp_path / "one_image_class"
    shutil.copytree(small_sample, data)
    for extra in sorted((data / "Bag").glob("*.png"))[1:]:
        extra.unlink()
    dataset = ingest_folder(data)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), epochs=2, image_size=64))
    metrics = worker.run(run_dir)
    # A few-shot set validates by leave-one-out; the lone Bag image cannot be scored, and that is said.
    assert metrics["validation"].startswith("leave-one-out") and "1 image alone" in metrics["validation"]
    assert metrics["n_train"] == 25 and metrics["n_val"] == 24 and metrics["val_acc"] > 0.5
