"""The teacher's view of a classroom server: every student's runs, the queue, cancel any, project one."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import streamlit as st

from pages.ui import class_live, gate, jobs, nav, session
from tl_core.ops import runs
from tl_core.use import classroom

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

if not gate.space().teacher:  # registered only for the teacher; refused if reached another way
    st.error("This page is for the teacher of the class.")
    st.stop()

st.title("Class")
gate.teacher_actions()  # sign a student out, give a fresh sign-in link
class_live.live_section()  # redraws itself: counts, live progress, every run
queue = jobs.queue()
# The live section just read every run (a full rerun runs it first); on its own it reads them again.
rows = state.get("class_rows") or [classroom.class_row(run_dir) for run_dir in jobs.visible_runs()]
if not rows:
    st.stop()

labels = {row["run_dir"]: f"{row['student']}: {row['run']} ({row['state']})" for row in rows}
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
