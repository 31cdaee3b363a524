"""One model trained by two CPU processes (gloo) through Lightning Fabric under torchrun: each trains on its
half of every epoch, rank 0 alone writes the run folder, and the ranks agree on the best weights, early
stopping and a STOP."""
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_core.data import datasets
from tl_core.ops import runs
from tl_core.config import RunConfig

pytest.importorskip("lightning_fabric")
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(run_dir: Path, workspace: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "tl_core.distributed", str(run_dir)],
        cwd=ROOT, env=dict(os.environ, TL_STUDIO_HOME=str(workspace), OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def reports(output: str) -> dict[int, tuple[str, str]]:
    """rank → (kept epoch, weights digest), from the line each rank prints when it ends."""
    return {int(rank): (epoch, digest)
            for rank, epoch, digest in re.findall(r"rank (\d+): kept epoch (\d+|None), weights ([0-9a-f]{16})", output)}


@pytest.fixture
def tiny_run(small_sample, _workspace):
    def make(**settings) -> Path:
        dataset = datasets.ingest_or_reuse_folder(small_sample)
        config = dict(backbone="test_efficientnet", weights="none", freeze="all", batch_size=4, image_size=64)
        return runs.create_run(RunConfig(dataset_dir=str(dataset.root), **{**config, **settings}))
    return make


def test_the_command_line_prepares_a_run_without_training_it(small_sample, _workspace):
    from tl_core.__main__ import main as cli

    run_dir = _workspace / "runs" / "prepared"
    assert cli(["train", "--data", str(small_sample), "--backbone", "test_efficientnet", "--weights", "none",
                "--run-dir", str(run_dir), "--prepare-only"]) == 0
    assert runs.read_status(run_dir)["state"] == "queued" and not runs.read_events(run_dir)


def test_the_averaged_gradients_of_two_halves_are_the_whole_batch_s(_workspace):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), str(ROOT / "tests" / "ddp_grad_worker.py")],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=180)
    # the two ranks share one pipe, so their lines may run together: match each report whole, not by line
    lines = sorted(re.findall(r"rank \d: shard \[[\d, ]*\], same as one process: \w+, moved: \w+", proc.stdout))
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert lines == ["rank 0: shard [0, 2, 4, 6], same as one process: True, moved: True",
                     "rank 1: shard [1, 3, 5, 7], same as one process: True, moved: True"]


def test_two_processes_train_one_model_and_agree(tiny_run, _workspace):
    run_dir = tiny_run(epochs=6, early_stopping=2)
    proc = torchrun(run_dir, _workspace)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert runs.read_status(run_dir)["state"] == "done"
    events = runs.read_events(run_dir)
    assert [e["event"] for e in events].count("fit_start") == 1  # rank 0 alone writes the run folder
    n_train = next(e for e in events if e["event"] == "fit_start")["n_train"]
    finetune_batches = {e["batches"] for e in events if e["event"] == "batch_end" and e.get("phase") == "finetune"}
    assert finetune_batches == {math.ceil(math.ceil(n_train / 2) / 4)}  # each rank trains on half an epoch
    done = reports(output)
    assert set(done) == {0, 1} and done[0] == done[1], output[-2000:]  # same kept epoch, the very same weights
    metrics = runs.read_metrics(run_dir)
    assert str(metrics["best_epoch"]) == done[0][0] and 0.0 <= metrics["val_acc"] <= 1.0
    assert json.loads(runs.RunFolder(run_dir).facts.read_text())["distributed"]["world_size"] == 2


def test_a_stop_ends_every_rank_at_the_same_batch(tiny_run, _workspace):
    run_dir = tiny_run(epochs=300, early_stopping=0)
    proc = torchrun(run_dir, _workspace)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if any(e["event"] == "epoch_end" and e.get("phase") == "finetune" for e in runs.read_events(run_dir)):
                break
            time.sleep(0.2)
        runs.request_stop(run_dir)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert runs.read_status(run_dir)["state"] == "cancelled"
    done = reports(output)
    assert set(done) == {0, 1} and done[0] == done[1], output[-2000:]


def _prepare(cli_args: list[str], run_dir: Path) -> Path:
    """The README's first step: `python -m tl_core train --data DIR --prepare-only` (a tiny timm model, small images)."""
    from tl_core.__main__ import main as cli

    assert cli(["train", *cli_args, "--backbone", "test_efficientnet", "--weights", "none", "--image-size", "64",
                "--run-dir", str(run_dir), "--prepare-only"]) == 0
    return run_dir


def _recipe(run_dir: Path, workspace: Path) -> tuple[list[dict], dict]:
    """The README's second step, torchrun with 2 processes; the run's events and metrics once both agree."""
    proc = torchrun(run_dir, workspace)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert runs.read_status(run_dir)["state"] == "done", runs.read_status(run_dir)
    done = reports(output)
    assert set(done) == {0, 1} and done[0] == done[1], output[-2000:]  # the same kept epoch and weights
    events = runs.read_events(run_dir)
    assert [e["event"] for e in events].count("fit_start") == 1
    return events, runs.read_metrics(run_dir)


def test_the_readme_recipe_trains_with_every_default(small_sample, _workspace):
    """freeze auto (the default): rank 0 measures the Auto plan, then both ranks train the plan it kept."""
    run_dir = _prepare(["--data", str(small_sample)], _workspace / "runs" / "defaults")
    assert runs.read_config(run_dir).freeze == "auto"
    events, metrics = _recipe(run_dir, _workspace)
    assert runs.RunFolder(run_dir).plan.exists()
    assert any(e["event"] == "notice" and e.get("phase") == "plan" for e in events)
    assert 0.0 <= metrics["val_acc"] <= 1.0


def test_the_readme_recipe_trains_a_labels_table(small_sample, _workspace, tmp_path):
    """--labels: a multi-task run, a head per task, trained by both processes."""
    import shutil

    from tl_core.data.sample_data import write_fashion_task_table

    data = tmp_path / "data"
    shutil.copytree(small_sample, data)
    write_fashion_task_table(data)
    run_dir = _prepare(["--data", str(data), "--labels", str(data / "labels.csv")], _workspace / "runs" / "tasks")
    assert runs.read_config(run_dir).task == "multitask"
    _, metrics = _recipe(run_dir, _workspace)
    assert set(metrics["tasks"]) == {"category", "group", "tags"}


def test_the_readme_recipe_adapts_to_target_images(small_sample, _workspace, tmp_path):
    """--adapt dann with --target-data: the domain head behind gradient reversal trains in both processes."""
    from PIL import Image, ImageOps

    target = tmp_path / "target"
    target.mkdir()
    for path in sorted(small_sample.rglob("*.png"))[::2]:
        ImageOps.invert(Image.open(path).convert("L")).save(target / f"{path.parent.name}_{path.name}")
    run_dir = _prepare(["--data", str(small_sample), "--target-data", str(target), "--adapt", "dann",
                        "--freeze", "top-1", "--epochs", "2"], _workspace / "runs" / "adapt")
    _, metrics = _recipe(run_dir, _workspace)
    assert metrics["target"]["method"] == "dann" and metrics["target"]["n_target"] == 16
