"""The Ray executor against a real local Ray head on 127.0.0.1, started by the test: a real tiny run end to end,
and a cancel. Skipped cleanly when Ray is not installed or its head cannot start here."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tl_core.data import datasets
from tl_core.ops import executors, runs
from tl_core.config import RunConfig

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group (so teardown ends exactly what it started)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="tlray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if head.poll() is not None:
                pytest.skip(f"the Ray head did not start here (exit code {head.returncode})")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.skip("the Ray head did not listen within 90 s")
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_real_tiny_run_trains_on_ray_and_a_cancel_stops_one(ray_head, small_sample, _workspace, monkeypatch):
    dataset = datasets.ingest_folder(small_sample, workspace=_workspace)
    monkeypatch.setenv(executors.RAY_ADDRESS_ENV, ray_head)
    executor = executors.make_executor(_workspace)
    assert isinstance(executor, executors.RayExecutor) and executor.gpus_per_run == 0  # the head has no GPU
    try:
        run_dir = executor.submit(RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet",
                                            weights="none", freeze="all", epochs=2, batch_size=8, image_size=64),
                                  owner="alice")
        status = executor.wait(run_dir, timeout=300)
        assert status["state"] == "done", (status, (run_dir / "worker.log").read_text()[-2000:])
        metrics = runs.read_metrics(run_dir)
        assert metrics["epochs_run"] >= 1 and 0.0 <= metrics["val_acc"] <= 1.0
        assert runs.RunFolder(run_dir).weights.is_file() and runs.read_owner(run_dir) == "alice"

        long_run = executor.submit(RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet",
                                             weights="none", freeze="all", epochs=500, early_stopping=0,
                                             batch_size=8, image_size=64))
        deadline = time.time() + 120
        while runs.read_status(long_run).get("state") == "queued" and time.time() < deadline:
            time.sleep(0.2)
        executor.cancel(long_run)
        assert executor.wait(long_run, timeout=120)["state"] == "cancelled"
    finally:
        executor.close(kill=True)
