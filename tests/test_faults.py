"""Fault injection: killed workers and servers, full disks, damaged run files, reused pids, chaos.

Invariants: never more than `slots` workers train at once, never two on one run, every run ends in a
final state, no page raises, nothing is written outside the workspace. Most scenarios use
tests/fault_worker.py, which claims runs exactly as the real worker does but trains nothing, so
they run in seconds; the full-disk and command-line scenarios use the real worker.
"""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apptest_support import open_page, plain
from tl_core.ops import jobs, runs, storage, words
from tl_core.config import RunConfig
from tl_core.ops.jobs import JobManager
from tl_core.ops.runs import create_run, read_status, request_stop, write_status
from tl_core.ops.storage import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
FAKE_WORKER = [sys.executable, str(Path(__file__).with_name("fault_worker.py"))]


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Path:
    """Where fake workers record spawn/start/end; HOME and TMPDIR of every process point at empty folders."""
    path = tmp_path / "ledger.jsonl"
    path.touch()
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("FAULT_LEDGER", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    return path


def queued(workspace: Path, seconds: float = 0.5, name: str = "") -> Path:
    run_dir = create_run(RunConfig(dataset_dir="unused", name=name), workspace)
    (run_dir / "fault_seconds").write_text(str(seconds))
    time.sleep(0.002)  # distinct queue times
    return run_dir


def entries(ledger: Path, event: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return [row for row in rows if event is None or row["event"] == event]


def training_intervals(ledger: Path, killed: dict[int, float] | None = None) -> list[tuple[str, float, float]]:
    """(run, start, end) of every worker that started training; a killed worker ends when it was killed."""
    ends = {row["pid"]: row["t"] for row in entries(ledger, "end")}
    return [(row["run"], row["t"], ends.get(row["pid"], (killed or {}).get(row["pid"], float("inf"))))
            for row in entries(ledger, "start")]


def max_overlap(intervals) -> int:
    points = sorted([(start, 1) for _, start, _ in intervals] + [(end, -1) for _, _, end in intervals],
                    key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, step in points:
        now += step
        most = max(most, now)
    return most


def assert_invariants(ledger: Path, run_dirs: list[Path], slots: int, killed=None) -> None:
    intervals = training_intervals(ledger, killed)
    assert max_overlap(intervals) <= slots, intervals
    for run in {run for run, _, _ in intervals}:
        assert max_overlap([i for i in intervals if i[0] == run]) <= 1, f"two workers on {run}"
    for run_dir in run_dirs:
        assert read_status(run_dir)["state"] in runs.FINAL_STATES, (run_dir.name, read_status(run_dir))


def assert_nothing_written_outside(tmp_path: Path, workspace: Path) -> None:
    assert not any((tmp_path / "home").iterdir()) and not any((tmp_path / "tmp").iterdir())
    assert {p.name for p in tmp_path.iterdir()} <= {workspace.name, "ledger.jsonl", "home", "tmp"}


def tick_until(manager: JobManager, done, timeout: float = 30, every: float = 0.05) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        manager.tick()
        if done():
            return
        time.sleep(every)
    raise AssertionError("timed out")


def all_final(run_dirs) -> bool:
    return all(read_status(r).get("state") in runs.FINAL_STATES for r in run_dirs)


# ---------------------------------------------------------------- workers and servers that die

def test_a_killed_worker_fails_its_run_and_the_next_one_starts(_workspace, ledger, tmp_path):
    manager = JobManager(_workspace, slots=1, background=False, worker_command=FAKE_WORKER)
    first, second = queued(_workspace, 30), queued(_workspace, 0.3)
    tick_until(manager, lambda: entries(ledger, "start"))
    victim = entries(ledger, "start")[0]["pid"]
    os.killpg(victim, signal.SIGKILL)
    killed = {victim: time.time()}
    tick_until(manager, lambda: all_final([first, second]))
    assert read_status(first)["state"] == "failed" and "SIGKILL" in read_status(first)["error"]
    assert read_status(second)["state"] == "done"
    assert_invariants(ledger, [first, second], 1, killed)
    assert_nothing_written_outside(tmp_path, _workspace)


def test_a_restarted_server_sees_the_surviving_worker_and_waits_for_it(_workspace, ledger, tmp_path):
    first, second = queued(_workspace, 3.0), queued(_workspace, 0.3)
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); from tl_core.ops.jobs import JobManager;"
         "JobManager(sys.argv[2], slots=1, poll_s=0.05, worker_command=sys.argv[3:]); time.sleep(600)",
         str(ROOT), str(_workspace), *FAKE_WORKER], cwd=ROOT)
    try:
        deadline = time.time() + 30
        while not entries(ledger, "start") and time.time() < deadline:
            time.sleep(0.05)
        assert entries(ledger, "start"), "the first server never started the first run"
    finally:
        server.kill()  # the server dies; its worker (a session of its own) trains on
        server.wait()
    survivor = entries(ledger, "start")[0]["pid"]
    assert runs.pid_alive(survivor) and read_status(first)["state"] == "running"

    restarted = JobManager(_workspace, slots=1, background=False, worker_command=FAKE_WORKER)
    for _ in range(10):
        restarted.tick()
        assert read_status(second)["state"] == "queued", "started beside the survivor"
        time.sleep(0.05)
    assert restarted.running() == [first]
    tick_until(restarted, lambda: all_final([first, second]))
    assert read_status(first)["state"] == read_status(second)["state"] == "done"
    assert_invariants(ledger, [first, second], 1)
    assert_nothing_written_outside(tmp_path, _workspace)


def test_a_running_run_whose_pid_now_belongs_to_another_process_is_failed(_workspace, ledger):
    run_dir = queued(_workspace)
    write_status(run_dir, state="running", pid=os.getpid())  # alive, but not a worker: no lock held
    JobManager(_workspace, background=False, worker_command=FAKE_WORKER).tick()
    status = read_status(run_dir)
    assert status["state"] == "failed" and "gone without finishing" in status["error"]
    assert entries(ledger) == []  # failed, not started again


def test_a_second_worker_for_a_run_exits_at_once_and_leaves_it_alone(_workspace, ledger):
    run_dir = queued(_workspace, 4.0)
    manager = JobManager(_workspace, background=False, worker_command=FAKE_WORKER)
    tick_until(manager, lambda: entries(ledger, "start"))
    started = time.time()
    second = subprocess.run([sys.executable, "-m", "tl_core", "train", str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == jobs.BUSY_EXIT and "already training this run" in second.stderr
    assert time.time() - started < 3  # at once: before importing torch, and with no status written
    assert read_status(run_dir)["state"] == "running" and len(entries(ledger, "start")) == 1
    tick_until(manager, lambda: all_final([run_dir]))
    assert read_status(run_dir)["state"] == "done"


def test_random_cancels_and_kills_with_two_servers_and_two_slots(_workspace, ledger, tmp_path):
    rng = random.Random(7)
    run_dirs = [queued(_workspace, rng.uniform(0.2, 1.2)) for _ in range(10)]
    servers = [JobManager(_workspace, slots=2, background=False, worker_command=FAKE_WORKER) for _ in range(2)]
    killed, deadline = {}, time.time() + 60
    while not all_final(run_dirs) and time.time() < deadline:
        rng.choice(servers).tick()
        action = rng.random()
        live = [row for row in entries(ledger, "start") if row["pid"] not in killed
                and not any(end["pid"] == row["pid"] for end in entries(ledger, "end"))]
        if action < 0.05:
            request_stop(rng.choice(run_dirs))
        elif action < 0.09 and live:
            victim = rng.choice(live)["pid"]
            try:
                os.killpg(victim, signal.SIGKILL)
                killed[victim] = time.time()
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    for server in servers:
        server.tick()
    assert_invariants(ledger, run_dirs, 2, killed)
    starts = [row["run"] for row in entries(ledger, "start")]
    assert len(starts) == len(set(starts)), "a run was trained twice"
    states = {read_status(r)["state"] for r in run_dirs}
    assert "done" in states and states <= set(runs.FINAL_STATES)
    assert_nothing_written_outside(tmp_path, _workspace)


# ---------------------------------------------------------------- full disks

def test_a_worker_that_cannot_write_fails_its_run_once_and_nothing_respawns(_workspace, ledger, monkeypatch):
    """The patched-writer variant (no mount needed): every status write of one run's worker hits a full disk."""
    run_dir, later = queued(_workspace), queued(_workspace)
    monkeypatch.setenv("FAULT_FULL_DISK_RUNS", run_dir.name)
    manager = JobManager(_workspace, slots=1, background=False, worker_command=FAKE_WORKER)
    tick_until(manager, lambda: all_final([run_dir, later]), timeout=20)
    for _ in range(20):
        manager.tick()
        time.sleep(0.02)
    assert [row["run"] for row in entries(ledger, "spawn")] == [run_dir.name, later.name]  # no respawn
    status = read_status(run_dir)
    assert status["state"] == "failed" and "exited with code 1" in status["error"]
    assert "the disk is full" in status["error"] and "status.json" in status["error"]  # from the worker's log
    assert read_status(later)["state"] == "done"


def test_a_status_the_scheduler_cannot_write_starts_nothing(_workspace, ledger, monkeypatch):
    run_dir, later = queued(_workspace), queued(_workspace)
    real_write = runs.write_status

    def full_for(run, **fields):
        if Path(run) == run_dir:
            raise storage.StorageFull(Path(run) / "status.json", 200)
        return real_write(run, **fields)

    monkeypatch.setattr(jobs, "write_status", full_for)
    manager = JobManager(_workspace, slots=1, background=False, worker_command=FAKE_WORKER)
    tick_until(manager, lambda: read_status(later).get("state") == "done", timeout=20)
    for _ in range(20):
        manager.tick()
    assert [row["run"] for row in entries(ledger, "spawn")] == [later.name]
    assert "could not start" in manager.unsaved_failures[run_dir] and "disk is full" in manager.unsaved_failures[run_dir]
    assert manager.wait(run_dir, timeout=1)["state"] == "failed" and read_status(run_dir)["state"] == "queued"
    monkeypatch.setattr(jobs, "write_status", real_write)
    manager.tick()  # room again: the failure is written down
    assert read_status(run_dir)["state"] == "failed" and not manager.unsaved_failures


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs as the workspace (root only); skipped where mounting is not permitted."""
    mount_point = tmp_path / "workspace"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_full_disk_starts_no_worker_fails_the_run_and_names_the_file(small_disk, ledger, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_HOME", str(small_disk))
    run_dir = create_run(RunConfig(dataset_dir="unused", epochs=1), small_disk)
    filler = fill(small_disk)
    manager = JobManager(small_disk, slots=1, background=False)  # the real worker, were one started
    spawned = set()
    for _ in range(40):  # 2 s of ticks: the old scheduler started a worker every one
        manager.tick()
        spawned |= {proc.pid for proc in manager.workers.values()}
        time.sleep(0.05)
    assert not spawned and not runs.lock_held(run_dir / runs.LOCK_FILE)
    reason = manager.unsaved_failures[run_dir]
    assert f"{run_dir / 'status.json'}: the disk is full (" in reason and "free on" in reason

    with pytest.raises(storage.StorageFull) as error:  # what the Train page now shows instead of a traceback
        manager.submit(RunConfig(dataset_dir="unused"))
    assert str(small_disk) in str(error.value) and "TL_STUDIO_HOME" in str(error.value)
    assert [p.name for p in runs.list_runs(small_disk)] == [run_dir.name]  # no half-made run left

    filler.unlink()  # room again: the failure is written down; no worker, let alone five, trains the run
    manager.tick()
    assert read_status(run_dir)["state"] == "failed" and "the disk is full" in read_status(run_dir)["error"]
    for _ in range(10):
        manager.tick()
    assert not manager.workers


@pytest.mark.usefixtures("navigation_pages", "fake_jobs")
def test_the_train_page_says_the_disk_is_full_instead_of_a_traceback(small_disk, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_HOME", str(small_disk))
    from tl_core.data.sample_data import SAMPLE_DIR
    from tl_core.data import datasets

    files = [(p.name, p.read_bytes(), label) for label in ("Bag", "Trouser")
             for p in sorted((SAMPLE_DIR / label).glob("*.png"))[:3]]
    dataset = datasets.ingest_files(files, name="small")
    fill(small_disk)
    at = open_page("pages/4_Train.py", dataset_dir=str(dataset.root))
    at.button(key="start_training").click().run()
    assert not at.exception
    message = plain(at.error[0].value)
    assert "the disk is full (" in message and str(small_disk) in message and "TL_STUDIO_HOME" in message


# ---------------------------------------------------------------- damaged run files

DAMAGE = {"empty": lambda data: b"", "truncated": lambda data: data[: max(1, len(data) // 2)],
          "garbage": lambda data: bytes(random.Random(len(data)).randrange(256) for _ in range(64))}


def finished(workspace: Path, name: str) -> Path:
    run_dir = create_run(RunConfig(dataset_dir=str(workspace / "gone"), epochs=2, name=name), workspace)
    events = [{"t": 1.0, "event": "fit_start", "epochs": 2},
              *({"t": 1.0 + e, "event": "epoch_end", "phase": "probe", "epoch": e, "train_loss": 1.0 / e,
                 "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.5, "seconds": 1.0} for e in (1, 2)),
              {"t": 4.0, "event": "fit_end", "val_acc": 0.5}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "predictions.csv").write_text("path,label,predicted,confidence\n/gone/a.png,a,b,0.9\n/gone/b.png,b,b,0.8\n")
    atomic_write_json(run_dir / "metrics.json", {
        "val_acc": 0.5, "val_loss": 0.7, "macro_f1": 0.5, "classes": ["a", "b"],
        "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for c in "ab"},
        "confusion": [[0, 1], [0, 1]], "best_epoch": 2, "epochs_run": 2, "wall_s": 1.0, "images_per_s": 2.0})
    write_status(run_dir, state="done", ended=4.0)
    return run_dir


@pytest.mark.usefixtures("navigation_pages", "fake_jobs")
def test_damaged_run_files_are_a_state_never_a_crash(_workspace, ledger):
    damaged = {}
    for file in ("status.json", "config.json", "metrics.json", "events.jsonl", "predictions.csv"):
        for kind, spoil in DAMAGE.items():
            run_dir = finished(_workspace, f"{file} {kind}")
            path = run_dir / file
            path.write_bytes(spoil(path.read_bytes()))
            damaged[run_dir] = (file, kind)
    middle = finished(_workspace, "broken line in the middle")
    lines = (middle / "events.jsonl").read_text().splitlines(keepends=True)
    (middle / "events.jsonl").write_text(lines[0] + '{"event": "epoch_e\n' + "".join(lines[1:]))
    waiting = queued(_workspace, 0.2)

    manager = JobManager(_workspace, background=False, worker_command=FAKE_WORKER)
    tick_until(manager, lambda: read_status(waiting)["state"] == "done")  # the queue is not stalled
    for run_dir, (file, kind) in damaged.items():
        row = words.summarize(run_dir)  # never raises
        if file in ("status.json", "config.json", "metrics.json"):
            assert row["damaged"] and row["damaged"].startswith(file), (file, kind, row)
        if file == "status.json":
            assert row["state"] == "damaged"
    assert [e["epoch"] for e in runs.read_events(middle) if e["event"] == "epoch_end"] == [1, 2]
    assert "events.jsonl: line 2 skipped" in words.summarize(middle)["damaged"]

    at = open_page("pages/8_Runs.py")
    texts = [plain(m.value) for m in at.markdown]
    assert any("damaged: status.json: empty file" in text for text in texts), texts
    target = next(r for r, (file, kind) in damaged.items() if (file, kind) == ("status.json", "garbage"))
    at.button(key=f"delete::{target.name}").click().run()
    assert not at.exception and not target.exists()
    for page, key in (("pages/5_Results.py", "results_run"), ("pages/4_Train.py", "run_dir")):
        at = open_page(page)
        for run_dir in [*damaged, middle]:
            if run_dir.exists():
                at.session_state[key] = str(run_dir)
                at.run()
                assert not at.exception, (page, damaged.get(run_dir), at.exception)


@pytest.mark.usefixtures("navigation_pages", "fake_jobs")
def test_damaged_model_files_are_a_message_on_predict_and_export(head_run, _workspace):
    for name, spoil in (("labels.json", b""), ("preprocess.json", b'{"backbone": '), ("model.safetensors", b"x" * 64)):
        run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / f"{head_run.name}-{name.split('.')[0]}"))
        (run_dir / name).write_bytes(spoil)
    at = open_page("pages/6_Predict.py")
    for run_dir in runs.list_runs():
        at.selectbox(key="predict_run").set_value(str(run_dir)).run()
        assert not at.exception and "cannot be loaded" in plain(at.error[0].value), run_dir.name
    at = open_page("pages/7_Export.py")
    for run_dir in runs.list_runs():
        at.selectbox(key="export_run").set_value(str(run_dir)).run()
        at.button(key="export_start").click().run()
        assert not at.exception and at.error, run_dir.name


# ---------------------------------------------------------------- every way in shares the slots

def test_the_command_line_waits_for_the_slot_an_app_run_holds(_workspace, ledger, tmp_path):
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for path in sorted((ROOT / "assets" / "sample" / "fashion" / ("Bag" if label == "a" else "Trouser"))
                           .glob("*.png"))[:3]:
            shutil.copy(path, data / label)
    app_run = queued(_workspace, 120.0)  # an app run that trains until it is stopped
    manager = JobManager(_workspace, slots=1, background=False, worker_command=FAKE_WORKER)
    tick_until(manager, lambda: entries(ledger, "start"))
    cli = subprocess.Popen([sys.executable, "-m", "tl_core", "train", "--data", str(data), "--backbone",
                            "test_efficientnet", "--weights", "none", "--epochs", "1", "--image-size", "32"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in cli.stdout:  # it says it waits, and does
        said.append(line)
        if "waiting for a free slot" in line:
            break
    assert "waiting for a free slot: 1 of 1 busy" in said[-1] and app_run.name in said[-1], said
    time.sleep(1.0)
    cli_run = Path(said[0].removeprefix("run folder: ").strip())
    assert read_status(cli_run)["state"] == "queued" and cli.poll() is None
    request_stop(app_run)
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err
    assert read_status(cli_run)["state"] == "done"
    assert read_status(cli_run)["started"] >= entries(ledger, "end")[0]["t"]  # only once the app's run ended
    tick_until(manager, lambda: all_final([app_run]))
    assert read_status(app_run)["state"] == "cancelled"
