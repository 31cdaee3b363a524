"""The Class page's live part: how many train and wait, and a row per run with its progress, redrawn every
REFRESH_S seconds (a fragment, so the rest of the page and the teacher's choices stay as they are)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core.ops import runs
from tl_core.use import classroom

from pages.ui import jobs
from pages.ui.text import literal

REFRESH_S = 3.0
COLUMNS = ["student", "run", "state", "progress", "now", "queue", "starts in", "accuracy", "dataset", "backbone"]


def rows() -> list[dict]:
    """A row per run the teacher sees, as the queue and the run folders say now."""
    queue = jobs.queue()
    found = []
    for run_dir in jobs.visible_runs():
        queued = runs.read_status(Path(run_dir)).get("state") == "queued"
        position = queue.queue_position(Path(run_dir)) if queued else None
        found.append(classroom.class_row(run_dir, position, queue.expected_wait(Path(run_dir)) if position else None))
    return found


@st.fragment(run_every=REFRESH_S)
def live_section() -> None:
    """The counts, the live runs' progress bars and the table of every run, read again every REFRESH_S s."""
    found = rows()
    st.session_state.class_rows = found  # the page's run chooser below reads them: one read of every run a rerun
    training_col, queue_col, students_col = st.columns(3)
    training_col.metric("Training now", sum(row["state"] == "running" for row in found))
    queue_col.metric("Waiting", sum(row["state"] == "queued" for row in found))
    students_col.metric("Students with runs", len({row["student"] for row in found} - {classroom.MISSING, "teacher"}))
    if not found:
        st.info("No runs yet in this class.")
        return
    for row in found:
        if row["state"] == "running":
            st.progress(row["progress"], text=literal(f"{row['student']} · {row['run']}: {row['now']}"))
    st.dataframe(pd.DataFrame(found), hide_index=True, key="class_runs", column_order=COLUMNS, column_config={
        "student": st.column_config.TextColumn("Student"), "run": st.column_config.TextColumn("Run", width="medium"),
        "state": "State", "progress": st.column_config.ProgressColumn("Progress", min_value=0.0, max_value=1.0),
        "now": st.column_config.TextColumn("Now", width="large"), "queue": "Queue position",
        "starts in": "Expected start", "accuracy": "Val. accuracy",
        "dataset": st.column_config.TextColumn("Dataset", width="medium"), "backbone": "Backbone"})
    st.caption(f"Read again every {REFRESH_S:.0f} s.")
