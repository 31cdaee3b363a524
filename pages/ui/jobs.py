"""The queue that trains runs, as this user sees it, and the runs they may look at.

One name for the pages: queue(). Underneath, tl_core.ops.executors makes the server's one executor (the
local worker queue, or Ray) and tl_core.ops.spaces.UserQueue puts this user's name on what they submit.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.models import devices
from tl_core.ops import executors
from tl_core.ops import runs
from tl_core.ops import spaces
from tl_core.ops.storage import workspace_root

from pages.ui import gate

ACTIVE_STATES = ("queued", "running")


@st.cache_resource(show_spinner=False)
def _executor_for(workspace: str) -> executors.Executor:
    return executors.make_executor(Path(workspace))  # the local worker queue, or Ray with TL_STUDIO_RAY_ADDRESS


def queue() -> spaces.UserQueue:
    """The server's one job queue (per workspace), as this user sees it: their runs carry their name."""
    return spaces.UserQueue(_executor_for(str(workspace_root())), gate.space())


@st.cache_resource(show_spinner=False)
def device_name() -> str:
    """Where training runs: the GPU's name, or the CPU."""
    return devices.describe()


def my_runs() -> list[str]:
    """This user's own runs, newest first (every run on a laptop)."""
    return [str(run_dir) for run_dir in gate.space().my_runs()]


def visible_runs() -> list[str]:
    """The runs this user may look at: their own; everyone's for the teacher."""
    return [str(run_dir) for run_dir in gate.space().visible_runs()]


def newest_active_run() -> Path | None:
    """This user's newest run still queued or running, so a reload or a second tab finds it again."""
    for run_dir in gate.space().my_runs():
        if runs.read_status(run_dir).get("state") in ACTIVE_STATES:
            return run_dir
    return None


def finished_runs() -> list[str]:
    """Runs that finished with a model to use, newest first."""
    return [str(run_dir) for run_dir in gate.space().visible_runs()
            if runs.read_status(run_dir).get("state") == "done" and runs.RunFolder(run_dir).weights.exists()]
