"""Where runs execute: the local worker queue (the embedded default) or a Ray cluster.

Both take a RunConfig and give back a run folder, and both are watched the same way: through the run
folder (status.json, events.jsonl, STOP), which is why a Ray cluster needs the workspace on storage
every node mounts at the same path (NFS, a cloud file system). Point the app at a cluster with
TL_STUDIO_RAY_ADDRESS=<head host>:<port> (as `ray start --head` prints it); each run is then one Ray
task asking for one GPU (or one CPU where the cluster has no GPU), and Ray places it on a node with a
free one. Ray is optional: only the Ray executor imports it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from ..config import RunConfig
from . import jobs
from .runs import FINAL_STATES, create_run, list_runs, open_worker_log, read_status, request_stop, write_status
from .storage import workspace_root

RAY_ADDRESS_ENV = "TL_STUDIO_RAY_ADDRESS"


class Executor(Protocol):
    """What the app needs of whatever runs the runs."""

    workspace: Path

    def submit(self, config: RunConfig, owner: str | None = None) -> Path: ...

    def cancel(self, run_dir: Path) -> None: ...

    def queue_position(self, run_dir: Path) -> int | None: ...

    def expected_wait(self, run_dir: Path) -> float | None: ...

    def running(self) -> list[Path]: ...

    def wait(self, run_dir: Path, timeout: float = 600) -> dict: ...

    def close(self, kill: bool = False) -> None: ...


def make_executor(workspace: Path | None = None) -> Executor:
    """The Ray executor when $TL_STUDIO_RAY_ADDRESS is set, else the local worker queue."""
    address = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    return RayExecutor(address, workspace) if address else jobs.JobManager(workspace)


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _train_in_a_worker(run_dir: str, workspace: str) -> int:
    """The body of a Ray task: the usual worker process, on the node Ray chose, with the GPU Ray gave it
    (Ray sets CUDA_VISIBLE_DEVICES for the task; the child inherits it). Its own process, so its GPU
    memory is freed when it ends and a crash never takes the Ray worker down."""
    project_root = _project_root()  # on this node: where Ray unpacked the tl_core it shipped
    env = dict(jobs.worker_environment(), TL_STUDIO_HOME=workspace, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([project_root, os.environ.get("PYTHONPATH", "")]),
               # Ray counts the GPUs; the workspace's slot locks must not queue runs a second time
               TL_STUDIO_SLOTS="4096")
    with open_worker_log(Path(run_dir)) as log:
        return subprocess.call([sys.executable, "-m", "tl_core", "train", run_dir], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=project_root)


class RayExecutor:
    """Each run a Ray task asking for one GPU; status and cancel through the run folder and Ray."""

    def __init__(self, address: str, workspace: Path | None = None, gpus_per_run: float | None = None,
                 ship_code: bool = True):
        import ray  # optional: only this executor needs it

        self.ray = ray
        self.workspace = Path(workspace) if workspace else workspace_root()
        runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])]} if ship_code else None
        ray.init(address=address, ignore_reinit_error=True, namespace="tl_studio", runtime_env=runtime_env,
                 logging_level="WARNING", log_to_driver=False)
        if gpus_per_run is None:
            gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.gpus_per_run = gpus_per_run
        self._task = ray.remote(_train_in_a_worker)
        self.tasks: dict[Path, object] = {}

    def submit(self, config: RunConfig, owner: str | None = None) -> Path:
        run_dir = create_run(config, self.workspace, owner=owner)
        options = {"num_gpus": self.gpus_per_run, "num_cpus": 1, "name": run_dir.name, "max_retries": 0}
        self.tasks[run_dir] = self._task.options(**options).remote(str(run_dir), str(self.workspace))
        return run_dir

    def cancel(self, run_dir: Path) -> None:
        """STOP for a run that trains (it stops within a batch, writing its own status); a run still
        waiting for Ray's resources is also taken off Ray's queue."""
        run_dir = Path(run_dir)
        request_stop(run_dir)
        task = self.tasks.get(run_dir)
        if task is not None and read_status(run_dir).get("state") == "cancelled":
            self.ray.cancel(task, force=False)

    def poll(self) -> None:
        """Fail the runs whose Ray task ended without the worker saying how (a node lost, a worker killed)."""
        for run_dir, task in list(self.tasks.items()):
            done, _ = self.ray.wait([task], timeout=0)
            if not done:
                continue
            del self.tasks[run_dir]
            try:
                code = self.ray.get(task)
                why = f"the worker exited with code {code} before finishing"
            except Exception as error:  # TaskCancelledError, WorkerCrashedError, a lost node…
                why = f"the Ray task ended: {type(error).__name__}"
            if read_status(run_dir).get("state") not in FINAL_STATES:
                write_status(run_dir, state="failed", ended=time.time(), error=why)

    def queue_position(self, run_dir: Path) -> int | None:
        """1 for the next of this server's waiting runs (Ray starts them as resources free up)."""
        self.poll()
        waiting = sorted((read_status(p).get("queued") or 0, p) for p in self.tasks
                         if read_status(p).get("state") == "queued")
        order = [p for _, p in waiting]
        return order.index(Path(run_dir)) + 1 if Path(run_dir) in order else None

    def expected_wait(self, run_dir: Path) -> float | None:
        return None  # Ray's placement depends on the whole cluster: no honest estimate here

    def running(self) -> list[Path]:
        return [p for p in list_runs(self.workspace) if read_status(p).get("state") == "running"]

    def wait(self, run_dir: Path, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.poll()
            status = read_status(run_dir)
            if status.get("state") in FINAL_STATES:
                return status
            time.sleep(0.5)
        raise TimeoutError(f"{run_dir}: still {read_status(run_dir).get('state')} after {timeout:.0f} s")

    def close(self, kill: bool = False) -> None:
        if kill:
            for task in self.tasks.values():
                self.ray.cancel(task, force=True)
        self.ray.shutdown()
