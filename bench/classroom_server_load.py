"""A classroom's load through the real server: N signed-in websocket clients rerun pages at once.

Replaces the AppTest-only page figure of bench/classroom_load.py (AppTest runs the script in the bench's own
process, with no server, no websocket, no protobuf): here `streamlit run app.py` serves the clients over
Streamlit's own protocol (tests/live_server.py), each client signed in through the gate as a student. For
each number of clients (1, 10, 30) and each page, every client asks for `--reruns` reruns of the page, all
clients at once; a round trip is from sending BackMsg.rerun_script to the script_finished message. Figures:
p50 / p95 round trip per page and number of clients, and the server process's memory (RSS, read from /proc)
after each step.

    python bench/classroom_server_load.py [--clients 1 10 30] [--reruns 3] [--out NAME.json]
Run it three times (draws); bench/results/classroom-server-load-*.json keep the raw figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from live_server import Client, Server, sign_in  # noqa: E402

CODE = "bench-class"
PAGES = ["Backbone", "Data", "Train", "Runs"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--out", default="classroom-server-load.json", help="file name under bench/results/")
    parser.add_argument("--summarize", action="store_true",
                        help="print mean ± sd over the draws in bench/results/classroom-server-load-*.json")
    args = parser.parse_args()
    if args.summarize:
        summarize()
        return
    home = Path(tempfile.mkdtemp(prefix="tl_load_"))
    server = Server(home / "workspace", home / "streamlit.log", TL_STUDIO_ACCESS_CODE=CODE,
                    TL_STUDIO_NAMES_PER_ADDRESS="1000").start()
    clients: list[Client] = []
    rows = []
    try:
        print(f"server pid {server.proc.pid}, RSS at start {rss_mb(server.proc.pid):.0f} MB", flush=True)
        for n in args.clients:
            while len(clients) < n:
                client = Client(server.url, timeout=300)
                sign_in(client, CODE, f"load-{len(clients):02d}")
                clients.append(client)
            for page in PAGES:
                times: list[float] = []
                lock = threading.Lock()

                def work(client: Client) -> None:
                    for _ in range(args.reruns):
                        start = time.perf_counter()
                        client.rerun(page)
                        with lock:
                            times.append(time.perf_counter() - start)

                threads = [threading.Thread(target=work, args=(c,)) for c in clients[:n]]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                row = {"clients": n, "page": page, "reruns": len(times), "p50_s": statistics.median(times),
                       "p95_s": percentile(times, 0.95), "rss_mb": rss_mb(server.proc.pid)}
                rows.append(row)
                print(f"{n:>3} clients  {page:<9} reruns {row['reruns']:>4}  p50 {row['p50_s']:.3f} s  "
                      f"p95 {row['p95_s']:.3f} s  server RSS {row['rss_mb']:.0f} MB", flush=True)
    finally:
        for client in clients:
            client.close()
        server.stop()
    out = ROOT / "bench" / "results" / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| clients | page | reruns | p50 (s) | p95 (s) | server RSS (MB) |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['page']} | {row['reruns']} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | "
              f"{row['rss_mb']:.0f} |")


def summarize() -> None:
    """One markdown table: per number of clients and page, mean ± sd over the draws."""
    draws = [json.loads(p.read_text()) for p in sorted((ROOT / "bench" / "results").glob("classroom-server-load-*.json"))]
    print(f"{len(draws)} draws\n\n| clients | page | p50 round trip (s) | p95 round trip (s) | server RSS (MB) |\n"
          "|---|---|---|---|---|")
    for index, row in enumerate(draws[0]):
        cells = []
        for key, digits in (("p50_s", 2), ("p95_s", 2), ("rss_mb", 0)):
            values = [draw[index][key] for draw in draws]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}")
        print(f"| {row['clients']} | {row['page']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
