"""A classroom's load on one server: N students sign in, each uploads a small zip and starts a head-only run
within about a minute; every run must finish, never more workers than slots, pages must stay quick.

Each student is a Streamlit AppTest session of the real app.py (sign-in form, Data page zip upload, Train
page Start), all in this one process with the real job manager (real worker processes, TL_STUDIO_SLOTS=1
on a CPU machine), as one server would hold them. While runs wait, random students' Train pages are
redrawn and timed. Figures: runs done / failed, the most workers seen at once, page render p50 / p95
while the queue is full, this process's memory (peak RSS), submit-to-start of the last student.

Its page-render figures time the script inside this process (AppTest: no server, no websocket) and are
replaced by bench/classroom_server_load.py, which measures round trips through the real server; this bench
stays for the queue (runs done, workers at once, submit to start).

    python bench/classroom_load.py --users 30        (about 10 minutes on a 2-core CPU)
Raw figures go to bench/results/classroom-load.json. Not part of the tests: it takes minutes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CODE = "bench-class"


def student_zip(source: Path, index: int, classes: int, per_class: int) -> bytes:
    """A zip of class folders, a different slice of the images for each student."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for folder in sorted(p for p in source.iterdir() if p.is_dir())[:classes]:
            images = sorted(folder.glob("*.png"))
            start = (index * per_class) % max(1, len(images) - per_class)
            for path in images[start:start + per_class]:
                zf.write(path, f"set{index}/{folder.name}/{path.name}")
    return archive.getvalue()


def timed_run(at, renders: list[float] | None = None):
    started = time.perf_counter()
    at.run()
    if renders is not None:
        renders.append(time.perf_counter() - started)
    if at.exception:
        raise RuntimeError(f"page error: {at.exception}")
    return at


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workspace = Path(tempfile.mkdtemp(prefix="tl_classroom_"))
    os.environ.update(TL_STUDIO_HOME=str(workspace), TL_STUDIO_ACCESS_CODE=CODE, TL_STUDIO_SLOTS="1")
    from streamlit.testing.v1 import AppTest

    from tl_core.ops import jobs, runs
    from tl_core.data.sample_data import SAMPLE_DIR

    slots = jobs.default_slots()
    most_workers, sampling = [0], threading.Event()

    def sample_workers():
        while not sampling.wait(0.2):
            most_workers[0] = max(most_workers[0], len(jobs.training_runs(workspace)))

    threading.Thread(target=sample_workers, daemon=True).start()
    rng = random.Random(args.seed)
    sessions, submit_renders, queue_renders, errors = [], [], [], []
    t0 = time.time()
    for index in range(args.users):
        try:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
            timed_run(at, submit_renders)
            at.text_input(key="access_code_given").set_value(CODE)
            at.text_input(key="user_name_given").set_value(f"student {index:02d}")
            at.button[0].click()
            timed_run(at, submit_renders)
            at.switch_page("pages/2_Data.py")
            timed_run(at, submit_renders)
            at.file_uploader(key="train_zip_upload").set_value(
                (f"set{index}.zip", student_zip(SAMPLE_DIR, index, args.classes, args.per_class), "application/zip"))
            timed_run(at, submit_renders)
            at.button(key="train_zip_ingest").click()
            timed_run(at, submit_renders)
            at.switch_page("pages/4_Train.py")
            timed_run(at, submit_renders)
            at.session_state["image_size"] = args.image_size
            at.button(key="start_training").click()
            timed_run(at, submit_renders)
            if not at.session_state["run_dir"]:
                raise RuntimeError(f"no run started: {[e.value for e in at.error]}")
            sessions.append(at)
        except Exception as error:  # counted, and the load goes on
            errors.append(f"student {index}: {error}")
    all_submitted_s = time.time() - t0
    print(f"{len(sessions)} of {args.users} students started a run in {all_submitted_s:.0f} s", flush=True)

    run_dirs = [Path(at.session_state["run_dir"]) for at in sessions]
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        states = [runs.read_status(p).get("state") for p in run_dirs]
        if all(state in runs.FINAL_STATES for state in states):
            break
        if states.count("queued"):
            try:
                timed_run(rng.choice(sessions), queue_renders)
            except Exception as error:
                errors.append(f"redraw: {error}")
        else:
            time.sleep(0.5)
    sampling.set()

    statuses = [runs.read_status(p) for p in run_dirs]
    waits = [s["started"] - s["queued"] for s in statuses if s.get("started") and s.get("queued")]
    figures = {
        "users": args.users, "slots": slots, "runs_started": len(run_dirs),
        "done": sum(s.get("state") == "done" for s in statuses),
        "failed": [s.get("error") for s in statuses if s.get("state") != "done"],
        "errors": errors, "most_workers_at_once": most_workers[0],
        "all_submitted_s": round(all_submitted_s, 1),
        "render_while_queued_p50_s": round(percentile(queue_renders, 0.5), 3),
        "render_while_queued_p95_s": round(percentile(queue_renders, 0.95), 3),
        "renders_while_queued": len(queue_renders),
        "render_while_submitting_p50_s": round(percentile(submit_renders, 0.5), 3),
        "render_while_submitting_p95_s": round(percentile(submit_renders, 0.95), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "last_user_submit_to_start_s": round(waits[-1], 1) if waits else None,
        "mean_run_s": round(statistics.mean(s["ended"] - s["started"] for s in statuses
                                            if s.get("ended") and s.get("started")), 1) if statuses else None,
        "total_s": round(time.time() - t0, 1),
        "device": "2-core CPU shared with other jobs, no GPU", "image_size": args.image_size,
        "data": f"bundled Fashion-MNIST sample, {args.classes} classes x {args.per_class} images a student",
    }
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "classroom-load.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
