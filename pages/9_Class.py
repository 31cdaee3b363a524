"""The teacher's view of a classroom server: every student's runs, the queue, cancel any, project one."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import gate, jobs, nav, session
from tl_core.ops import runs
from tl_core.ops import words

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

if not gate.space().teacher:  # registered only for the teacher; refused if reached another way
    st.error("This page is for the teacher of the class.")
    st.stop()

st.title("Class")
gate.teacher_actions()  # sign a student out, give a fresh sign-in link
queue = jobs.queue()
rows = []
for run_dir in jobs.visible_runs():
    row = words.summarize(Path(run_dir))
    position = queue.queue_position(Path(run_dir)) if row["state"] == "queued" else None
    wait_s = queue.expected_wait(Path(run_dir)) if position else None
    rows.append({"owner": runs.read_owner(Path(run_dir)) or "–", "run_id": row["run_id"], "state": row["state"],
                 "position": position, "starts in": words.format_seconds(wait_s) if wait_s else None,
                 "val_acc": row["val_acc"], "dataset": row["dataset"], "backbone": row["backbone"],
                 "run_dir": run_dir})
running = sum(row["state"] == "running" for row in rows)
waiting = sum(row["state"] == "queued" for row in rows)
students = {row["owner"] for row in rows} - {"–", "teacher"}
training_col, queue_col, students_col = st.columns(3)
training_col.metric("Training now", running)
queue_col.metric("Waiting", waiting)
students_col.metric("Students with runs", len(students))
if not rows:
    st.info("No runs yet in this class.")
    st.stop()
st.dataframe(pd.DataFrame(rows), hide_index=True, key="class_runs",
             column_order=["owner", "run_id", "state", "position", "starts in", "val_acc", "dataset", "backbone"],
             column_config={"owner": st.column_config.TextColumn("Student"), "run_id": "Run", "state": "State",
                            "position": "Queue position", "starts in": "Expected start",
                            "val_acc": st.column_config.NumberColumn("Val. accuracy", format="percent"),
                            "dataset": st.column_config.TextColumn("Dataset"), "backbone": "Backbone"})

labels = {row["run_dir"]: f"{row['owner']}: {row['run_id']} ({row['state']})" for row in rows}
chosen = st.selectbox("A run", list(labels), key="class_chosen", format_func=labels.get)
cancel_col, project_col = st.columns(2)
if cancel_col.button("Cancel this run", key="class_cancel", icon=":material/stop:",
                     disabled=runs.read_status(Path(chosen)).get("state") not in jobs.ACTIVE_STATES):
    queue.cancel(Path(chosen))
    st.rerun()
if project_col.button("Project its results", key="class_project", icon=":material/co_present:",
                      disabled=runs.read_status(Path(chosen)).get("state") != "done"):
    state.results_run = chosen
    st.switch_page(nav.RESULTS_PAGE)
