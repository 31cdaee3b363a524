"""A stand-in for `python -m tl_core train RUN_DIR` that trains nothing, for the fault-injection tests.

It claims its run exactly as the real worker does (tl_core.ops.jobs.claim_run: the inherited locks, or its
own), writes the statuses the real worker writes, and records in $FAULT_LEDGER (outside the workspace)
when it was spawned, when it started "training" and when it ended. It "trains" for the seconds in the
run folder's `fault_seconds` file (default 0.5), checking for a STOP file as the real loop does.
For the runs named in $FAULT_FULL_DISK_RUNS every status write fails as on a full disk.
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tl_core.ops.jobs import BUSY_EXIT, RunBusy, claim_run  # noqa: E402
from tl_core.ops.runs import stop_requested, write_status  # noqa: E402


def record(**fields) -> None:
    with open(os.environ["FAULT_LEDGER"], "a") as ledger:  # O_APPEND: whole lines from every process
        ledger.write(json.dumps({"pid": os.getpid(), "t": time.time(), **fields}) + "\n")


def main(run_dir: Path) -> int:
    record(event="spawn", run=run_dir.name)
    if run_dir.name in os.environ.get("FAULT_FULL_DISK_RUNS", "").split(","):  # the patched writer
        import tl_core.ops.runs
        from tl_core.ops.storage import StorageFull

        def full(path, obj):
            raise StorageFull(path, len(json.dumps(obj)))

        tl_core.ops.runs.atomic_write_json = full
    try:
        with claim_run(run_dir, poll_s=0.05) as claim:
            if claim.cancelled:
                return 0
            write_status(run_dir, state="running", pid=os.getpid(), started=time.time(), error=None)
            record(event="start", run=run_dir.name, slot=claim.slot)
            seconds = float((run_dir / "fault_seconds").read_text()) if (run_dir / "fault_seconds").exists() else 0.5
            deadline = time.time() + seconds
            while time.time() < deadline:
                if stop_requested(run_dir):
                    record(event="end", run=run_dir.name)
                    write_status(run_dir, state="cancelled", ended=time.time())
                    return 0
                time.sleep(0.02)
            record(event="end", run=run_dir.name)
            write_status(run_dir, state="done", ended=time.time())
            return 0
    except RunBusy:
        record(event="busy", run=run_dir.name)
        return BUSY_EXIT
    except OSError as error:  # as the real worker: the reason on stderr, a non-zero exit
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
