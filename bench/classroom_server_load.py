"""A classroom's load through the real server: server CPU per page rerun, and N websocket clients rerunning at once.

`streamlit run app.py` serves the clients over Streamlit's own protocol (tests/live_server.py), each client signed
in through the gate as a student who took the sample dataset (the Data page's button) and owns finished runs (a
real run trained once, copied), so every page has a dataset and runs to show. Two measures:

1. CPU per rerun, per page: one client reruns each page (warm-up reruns first, then `--cpu-reruns`), and the
   server process's CPU time (utime + stime from /proc/<pid>/stat) over those reruns is divided by their number:
   milliseconds of server CPU one warm rerun of that page costs. The Class page is measured for the teacher.
2. Load: for each number of clients (1, 10, 30) and each page, every client asks for `--reruns` reruns of the
   page, all at once and without pauses (a worst case); a round trip is from sending BackMsg.rerun_script to
   the script_finished message. Figures: p50 / p95 / max round trip, the server's CPU use over the step (% of one
   core) and its memory (RSS).

`--root DIR` serves another checkout's app (the code before a change: `--root /work/main`); `--profile DIR` runs
the server under bench/profile_server.py and prints where each page's CPU goes (cProfile, cumulative time).

    python bench/classroom_server_load.py [--root DIR] [--clients 1 10 30] [--reruns 3] [--out NAME.json]
    python bench/classroom_server_load.py --summarize 'classroom-server-after-*.json'
Run it three times (draws); bench/results/ keeps the raw figures. The machine's load average is printed with
each draw: the machine is shared, so round trips are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from live_server import Client, Server, click, sign_in  # noqa: E402
from tl_core.data.sample_data import SAMPLE_DIR  # noqa: E402
from tl_core.ops.runs import RunFolder  # noqa: E402
from tl_core.ops.storage import atomic_write_json  # noqa: E402

CODE, TEACHER_CODE = "bench-class", "bench-teacher"
STUDENT_PAGES = ["Backbone", "Data", "Layers", "Train", "Results", "Predict", "Export", "Runs"]
LOAD_PAGES = ["Backbone", "Data", "Train", "Runs"]
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds the process used so far (user + system), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def trained_run() -> Path:
    """A real finished run (embedded EfficientNet-Lite0, head only, 2 epochs at 96 px on 4 × 8 sample images),
    trained once and kept in the temporary folder for the next draws."""
    cache = Path(tempfile.gettempdir()) / "tl_bench_run"
    run_dir = cache / "workspace" / "runs" / "20260101-000000-bench"
    if RunFolder(run_dir).weights.exists():
        return run_dir
    shutil.rmtree(cache, ignore_errors=True)
    for name in ("Trouser", "Bag", "Sneaker", "Dress"):
        (cache / "data" / name).mkdir(parents=True)
        for image in sorted((SAMPLE_DIR / name).glob("*.png"))[:8]:
            shutil.copy(image, cache / "data" / name / image.name)
    subprocess.run([sys.executable, "-m", "tl_core", "train", "--data", str(cache / "data"), "--freeze", "head",
                    "--epochs", "2", "--features", "last", "--image-size", "96", "--run-dir", str(run_dir)],
                   cwd=ROOT, env=dict(os.environ, TL_STUDIO_HOME=str(cache / "workspace")), check=True,
                   stdout=subprocess.DEVNULL)
    return run_dir


def seed_runs(workspace: Path, names: list[str], per_student: int) -> None:
    """`per_student` finished runs owned by each name, in the server's one runs folder (as a class after a lesson)."""
    source = trained_run()
    for name in names:
        for index in range(per_student):
            run_dir = workspace / "runs" / f"2026010{index + 1}-000000-{name}"
            shutil.copytree(source, run_dir)
            atomic_write_json(RunFolder(run_dir).owner, {"owner": name})


def student(url: str, name: str) -> Client:
    """A client signed in as `name`, who took the sample dataset on the Data page."""
    client = Client(url, timeout=300)
    sign_in(client, CODE, name)
    data = client.rerun("Data")
    try:
        client.rerun("Data", [click(data.widget("button", "Try the sample dataset").id)])
    except LookupError:  # an app without the button: the pages run without a dataset
        pass
    return client


def cpu_per_page(server: Server, client: Client, teacher: Client, reruns: int) -> dict[str, float]:
    """Milliseconds of server CPU per warm rerun of each page."""
    result = {}
    for page, who in [(page, client) for page in STUDENT_PAGES] + [("Class", teacher)]:
        for _ in range(2):  # warm: first visits fill caches and import modules
            who.rerun(page)
        time.sleep(0.3)  # let the websocket's last messages be sent before counting
        start = cpu_s(server.proc.pid)
        for _ in range(reruns):
            who.rerun(page)
        result[page] = 1000 * (cpu_s(server.proc.pid) - start) / reruns
        print(f"  {page:<9} {result[page]:6.1f} ms of server CPU per rerun", flush=True)
    return result


def load_step(server: Server, clients: list[Client], page: str, reruns: int, warm: bool = False) -> dict:
    times: list[float] = []
    lock = threading.Lock()
    if warm:  # every client opens the page once, untimed: the step then times reruns on warm caches only
        visits = [threading.Thread(target=client.rerun, args=(page,)) for client in clients]
        for visit in visits:
            visit.start()
        for visit in visits:
            visit.join()

    def work(client: Client) -> None:
        for _ in range(reruns):
            start = time.perf_counter()
            client.rerun(page)
            with lock:
                times.append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    wall, cpu = time.perf_counter(), cpu_s(server.proc.pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, cpu_s(server.proc.pid) - cpu
    return {"clients": len(clients), "page": page, "reruns": len(times), "p50_s": statistics.median(times),
            "p95_s": percentile(times, 0.95), "max_s": max(times), "cpu_pct": 100 * cpu / wall,
            "rss_mb": rss_mb(server.proc.pid)}


def print_profiles(folder: Path, top: int) -> None:
    for prof in sorted(folder.glob("*.prof")):
        print(f"\n### {prof.stem}: cumulative time, top {top}")
        stats = pstats.Stats(str(prof))
        stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the app checkout to serve (default: this one)")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 10, 30])
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--cpu-reruns", type=int, default=10)
    parser.add_argument("--runs-per-student", type=int, default=2, help="finished runs each student owns")
    parser.add_argument("--profile", type=Path, help="profile each page's reruns (cProfile) into this folder")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pages", nargs="*", default=LOAD_PAGES, help="pages of the load steps")
    parser.add_argument("--warm", action="store_true",
                        help="each client opens the page once, untimed, before its step (by default a client's "
                             "first visit of a page is timed with its reruns: a new student's caches are cold)")
    parser.add_argument("--out", default="classroom-server-load.json", help="file name under bench/results/")
    parser.add_argument("--summarize", metavar="GLOB", help="print mean ± sd over the draws bench/results/GLOB")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    home = Path(tempfile.mkdtemp(prefix="tl_load_"))
    seed_runs(home / "workspace", [f"load-{index:02d}" for index in range(max(args.clients + [1]))],
              args.runs_per_student)
    env = dict(TL_STUDIO_ACCESS_CODE=CODE, TL_STUDIO_TEACHER_CODE=TEACHER_CODE, TL_STUDIO_NAMES_PER_ADDRESS="1000",
               TL_STUDIO_GUESSES_PER_SERVER="100000", TL_STUDIO_MAX_DATASETS="1000")
    argv = None
    if args.profile:
        env["TL_PROFILE_DIR"] = str(args.profile.resolve())
        argv = [str(ROOT / "bench" / "profile_server.py"), "run", "app.py"]
    server = Server(home / "workspace", home / "streamlit.log", root=args.root, argv=argv, **env).start()
    clients: list[Client] = []
    rows = []
    load = os.getloadavg()
    try:
        pid = server.proc.pid
        print(f"app {args.root}, server pid {pid}, RSS at start {rss_mb(pid):.0f} MB, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        clients.append(student(server.url, "load-00"))
        teacher = Client(server.url, timeout=300)
        sign_in(teacher, TEACHER_CODE, "")
        cpu = cpu_per_page(server, clients[0], teacher, args.cpu_reruns)
        teacher.close()
        for n in args.clients:
            while len(clients) < n:
                clients.append(student(server.url, f"load-{len(clients):02d}"))
            for page in args.pages:
                row = load_step(server, clients[:n], page, args.reruns, args.warm)
                row["warm"] = args.warm
                rows.append(row)
                print(f"{n:>3} clients  {page:<9} reruns {row['reruns']:>4}  p50 {row['p50_s']:.3f} s  "
                      f"p95 {row['p95_s']:.3f} s  max {row['max_s']:.3f} s  server CPU {row['cpu_pct']:.0f} %  "
                      f"RSS {row['rss_mb']:.0f} MB", flush=True)
    finally:
        for client in clients:
            client.close()
        server.stop()
    if args.profile:
        print_profiles(args.profile, args.top)
    end_load = os.getloadavg()
    out = ROOT / "bench" / "results" / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"root": str(args.root), "loadavg_start": load, "loadavg_end": end_load,
                               "cpu_ms_per_rerun": cpu, "load": rows}, indent=2) + "\n")
    print(f"\nload average at the end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}")
    print("\n| page | server CPU per rerun (ms) |\n|---|---|")
    for page, ms in cpu.items():
        print(f"| {page} | {ms:.0f} |")
    print("\n| clients | page | reruns | p50 (s) | p95 (s) | max (s) | server CPU (% of a core) | RSS (MB) |\n"
          "|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['page']} | {row['reruns']} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | "
              f"{row['max_s']:.2f} | {row['cpu_pct']:.0f} | {row['rss_mb']:.0f} |")


def summarize(pattern: str) -> None:
    """Markdown tables over the draws matching `pattern`: mean ± sd per page, and per clients and page."""
    draws = [json.loads(p.read_text()) for p in sorted((ROOT / "bench" / "results").glob(pattern))]
    # the first version of this bench wrote only the load rows, without CPU figures or load averages
    draws = [d if isinstance(d, dict) else {"loadavg_start": [float("nan")], "cpu_ms_per_rerun": {}, "load": d}
             for d in draws]

    def cell(values: list[float], digits: int) -> str:
        if any(value != value for value in values):  # not measured (NaN) in the first format
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    loads = ", ".join(f"{d['loadavg_start'][0]:.1f}" for d in draws)
    print(f"{len(draws)} draws (1-minute load average at the start of each: {loads})\n")
    print("| page | server CPU per warm rerun (ms) |\n|---|---|")
    for page in draws[0]["cpu_ms_per_rerun"]:
        print(f"| {page} | {cell([d['cpu_ms_per_rerun'][page] for d in draws], 0)} |")
    print("\n| clients | page | p50 (s) | p95 (s) | max (s) | server CPU (% of a core) |\n|---|---|---|---|---|---|")
    for index, row in enumerate(draws[0]["load"]):
        cells = [cell([d["load"][index].get(key, float("nan")) for d in draws], digits)
                 for key, digits in (("p50_s", 2), ("p95_s", 2), ("max_s", 2), ("cpu_pct", 0))]
        print(f"| {row['clients']} | {row['page']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
