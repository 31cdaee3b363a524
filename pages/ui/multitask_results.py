"""A multi-task run on the Results page: its tasks side by side, their curves, whether sharing one backbone
helped each task (against a model per task), and the task the rest of the page shows. Widgets only;
tl_core.multitask and tl_core.use.compare do the work.

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import jobs, widgets
from pages.ui.text import literal
from tl_core import multitask
from tl_core import plots
from tl_core.use import compare
from tl_core.ops import runs


def _start_separate(run_dir: Path) -> None:
    try:
        st.session_state.run_dir = str(compare.start_separate_models(jobs.queue(), run_dir)[0])
    except widgets.USER_ERRORS as error:
        st.session_state.separate_error = str(error)


def section(run_dir: Path, metrics: dict, events: list[dict], status: dict) -> str:
    """Show the tasks; return the one chosen for the rest of the page."""
    st.subheader("Per task")
    st.dataframe(pd.DataFrame(multitask.task_summary_rows(metrics)), hide_index=True, key="task_table",
                 column_config={"score": st.column_config.ProgressColumn("Score", min_value=0.0, max_value=1.0,
                                                                         format="%.3f"),
                                "macro F1": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Accuracy for a task with one class an image; mean average precision (mAP) for tags, which "
               "does not depend on the thresholds. The headline above is the mean of the tasks' scores.")
    st.plotly_chart(plots.task_figure(events), key="task_chart")
    if status.get("state") == "done":
        _sharing(run_dir, metrics)
    return st.selectbox("Task shown below", list(metrics["tasks"]), key="results_task",
                        help="The per-class table, confusion matrix and image galleries below are this task's.")


def _sharing(run_dir: Path, metrics: dict) -> None:
    st.subheader("Did sharing one backbone help?")
    config = runs.read_config(run_dir)  # reads older runs' "extra" too
    if config.separate_of:
        st.caption(literal(f"This run trained the task {config.only_task} alone, to compare with the "
                           f"shared model {config.separate_of}."))
        return
    twins = compare.find_separate_models(run_dir)
    if not twins:
        st.caption("Train one model per task on the same images, backbone and budget: the difference per task "
                   "says whether learning the tasks together helped (positive transfer) or hurt (negative).")
        st.button("Compare with a model per task", key="start_separate", icon=":material/compare_arrows:",
                  on_click=_start_separate, args=(run_dir,))
        if error := st.session_state.pop("separate_error", None):
            st.error(literal(error))
        return
    states = {task: runs.read_status(d).get("state") for task, d in twins.items()}
    if any(s in jobs.ACTIVE_STATES for s in states.values()):
        waiting = ", ".join(f"{task} ({s})" for task, s in states.items())
        st.info(literal(f"The separate models are training: {waiting}; the comparison appears when they end."),
                icon=":material/hourglass_top:")
        return
    verdict = compare.sharing_verdict(metrics, {task: runs.read_metrics(d) or {} for task, d in twins.items()})
    {"positive": st.success, "negative": st.warning}.get(verdict["kind"], st.info)(literal(verdict["text"]))
    if verdict["rows"]:
        st.dataframe(pd.DataFrame([{"task": r["task"], "measure": r["score_name"], "shared": r["shared"],
                                    "alone": r["alone"], "difference (points)": round(100 * r["gain"], 1),
                                    "noise (± points)": round(100 * r["margin"], 1)} for r in verdict["rows"]]),
                     hide_index=True, key="sharing_table")
