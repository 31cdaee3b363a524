"""Run the app's real Streamlit server with every script run profiled (cProfile), one profile per page.

`python -m cProfile -m streamlit run` sees only the main thread, and Streamlit runs scripts in their own threads:
this launcher wraps ScriptRunner._run_script instead, so each script run (a rerun, as a websocket client asks)
is profiled alone. The page is the one the run asked for (its name in the rerun message, '' for the default).
It also times Python's own garbage collections (gc.json: count, seconds and the longest, per generation).
At exit (SIGTERM, as tests/live_server.Server.stop sends) it writes one .prof per page under TL_PROFILE_DIR,
to read with pstats (bench/classroom_server_load.py --profile prints the top functions).

    TL_PROFILE_DIR=/tmp/prof python bench/profile_server.py run app.py --server.headless true ...
"""
from __future__ import annotations

import atexit
import cProfile
import gc
import json
import os
import time
import signal
import sys
import threading
from pathlib import Path

from streamlit.runtime.scriptrunner import script_runner
from streamlit.web import cli

OUT = Path(os.environ.get("TL_PROFILE_DIR", "profiles"))
_profiles: dict[str, cProfile.Profile] = {}
_lock = threading.Lock()  # cProfile allows one active profiler per thread; runs in other threads wait their turn
_original = script_runner.ScriptRunner._run_script
_collections: dict[int, list[float]] = {0: [], 1: [], 2: []}  # seconds each automatic collection took, per generation
_started: list[float] = [0.0]


def _on_gc(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _collections[info["generation"]].append(time.perf_counter() - _started[0])


def _profiled(self, rerun_data):
    page = rerun_data.page_name or "default"
    with _lock:
        profile = _profiles.setdefault(page, cProfile.Profile())
        profile.enable()
        try:
            return _original(self, rerun_data)
        finally:
            profile.disable()


def _dump(*_):
    OUT.mkdir(parents=True, exist_ok=True)
    for page, profile in _profiles.items():
        profile.dump_stats(OUT / f"{page}.prof")
    (OUT / "gc.json").write_text(json.dumps({str(g): {"count": len(t), "seconds": sum(t), "max_s": max(t, default=0),
                                                      "each_s": [round(x, 4) for x in t] if g == 2 else None}
                                             for g, t in _collections.items()}, indent=2))


script_runner.ScriptRunner._run_script = _profiled
gc.callbacks.append(_on_gc)
atexit.register(_dump)
signal.signal(signal.SIGTERM, lambda *_: (_dump(), os._exit(0)))  # Streamlit's own handler would not return here

if __name__ == "__main__":
    sys.argv = ["streamlit", *sys.argv[1:]]
    sys.exit(cli.main())
