"""Step 5: how good is the classifier, where and why does it go wrong, and did pretraining help (a run of another
task kind: its kind's results section, pages/ui/kinds.py)."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import streamlit as st

from pages.ui import (cached, data_quality, grow_model, heldout_test, jobs, kinds, labels, nav, results_headline,
                      results_images, session, sidebar, transfer, widgets)
from pages.ui.text import literal
from tl_core import plots
from tl_core.ops import runs

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

st.title("5 · Results")
all_runs = jobs.visible_runs()  # a student's own runs; everyone's for the teacher
if not all_runs:
    nav.need_first("No runs yet: train a model first.", nav.TRAIN_PAGE, "4 · Train")


def default_run() -> str:
    """The session's run, else the newest finished one, else the newest."""
    if state.run_dir in all_runs:
        return state.run_dir
    done = [run_dir for run_dir in all_runs if runs.read_status(Path(run_dir)).get("state") == "done"]
    return (done or all_runs)[0]


def run_state(run_dir: Path, status: dict) -> None:
    """Still training, failed, stopped or damaged: said before any result."""
    if status.get("state") in jobs.ACTIVE_STATES:
        widgets.wait_for(str(run_dir), "This run is still training; its results appear here when it ends.")
        st.page_link(nav.TRAIN_PAGE, label="Watch it live", icon=":material/model_training:")
    elif status.get("state") == "failed":
        st.error(f"The run failed: {literal(status.get('error') or 'no reason given')}")
    elif status.get("state") == "cancelled":
        st.warning("The run was stopped before it finished.", icon=":material/stop_circle:")
    for problem in runs.damage(run_dir):  # a damaged file is a message here, never a crash
        st.warning(f"Damaged: {literal(problem)}. Delete the run on the Runs page if it is of no use.",
                   icon=":material/broken_image:")


def curves(run_dir: Path, events: list[dict]) -> None:
    """Loss and accuracy per epoch, as the Train page drew them live."""
    if any(event.get("event") == "epoch_end" for event in events):
        st.subheader("Training curves")
        loss_col, accuracy_col = st.columns(2)
        loss_col.plotly_chart(cached.figure(run_dir, lambda: plots.loss_figure(events), "loss"), key="results_loss_chart")
        accuracy_col.plotly_chart(cached.figure(run_dir, lambda: plots.accuracy_figure(events), "accuracy"),
                                  key="results_accuracy_chart")


def classifier_results(run_dir: Path, status: dict) -> None:
    """A classifier's results, from its headline to what to do with it next."""
    metrics, events = runs.read_metrics(run_dir), runs.read_events(run_dir)
    if metrics:
        results_headline.headline_section(run_dir, metrics, events)
        results_images.predictions_section(run_dir, metrics, events, status)
    elif status.get("state") == "done":
        st.warning("This run has no metrics.json: its results were not saved.")
    curves(run_dir, events)
    if metrics and status.get("state") == "done":
        if not metrics.get("tasks"):  # a multi-task model is tested with a labels table (the command line)
            heldout_test.heldout_section(run_dir)
        transfer.transfer_section(run_dir)
        data_quality.label_next_section(run_dir)
        grow_model.grow_section(run_dir)


if state.get("results_run") not in all_runs:
    state.results_run = default_run()
st.selectbox("Run", all_runs, key="results_run", format_func=labels.run_label)
run_dir = Path(state.results_run)
labels.rename_box(run_dir)
sidebar.show_run(run_dir)
status = runs.read_status(run_dir)
run_state(run_dir, status)
if (kind_results := kinds.section(kinds.of_run(run_dir), "results")) is not None:
    kind_results(run_dir)
else:
    classifier_results(run_dir, status)
st.page_link(nav.RUNS_PAGE, label="All runs, side by side", icon=":material/table_chart:")
