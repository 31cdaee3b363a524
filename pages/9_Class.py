"""The teacher's view of a classroom server: every student's runs, the queue, cancel any, project one."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import gate, jobs, nav, session
from tl_core.ops import runs
from tl_core.ops import words
from tl_core.use import run_facts

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
    row = run_facts.summary(run_dir)  # the run's and the dataset's names, not their ids
    position = queue.queue_position(Path(run_dir)) if row["state"] == "queued" else None
    wait_s = queue.expected_wait(Path(run_dir)) if position else None
    # every cell text, "—" when unknown: a number column shows a missing value as "None"
    rows.append({"owner": runs.read_owner(Path(run_dir)) or "—", "name": row["name"], "state": row["state"],
                 "position": str(position) if position else "—", "starts in": words.format_seconds(wait_s) if wait_s else "—",
                 "val_acc": run_facts.percent(row["val_acc"]), "dataset": row["dataset"] or "—", "backbone": row["backbone"] or "—",
                 "run_dir": run_dir})
running = sum(row["state"] == "running" for row in rows)
waiting = sum(row["state"] == "queued" for row in rows)
students = {row["owner"] for row in rows} - {"—", "teacher"}
training_col, queue_col, students_col = st.columns(3)
training_col.metric("Training now", running)
queue_col.metric("Waiting", waiting)
students_col.metric("Students with runs", len(students))
if not rows:
    st.info("No runs yet in this class.")
    st.stop()
st.dataframe(pd.DataFrame(rows), hide_index=True, key="class_runs",
             column_order=["owner", "name", "state", "position", "starts in", "val_acc", "dataset", "backbone"],
             column_config={"owner": st.column_config.TextColumn("Student", width="small"),
                            "name": st.column_config.TextColumn("Run", width="large"), "state": "State",
                            "position": st.column_config.TextColumn("Queue", help="Position in the queue"),
                            "starts in": "Starts in",
                            "val_acc": st.column_config.TextColumn("Accuracy"),
                            "dataset": st.column_config.TextColumn("Dataset", width="medium"),
                            "backbone": st.column_config.TextColumn("Backbone", width="medium")})

labels = {row["run_dir"]: f"{row['owner']}: {row['name']} ({row['state']})" for row in rows}
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
