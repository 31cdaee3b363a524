"""Step 8: every run of the workspace, and two or more side by side: what differs, and what it changed."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import gate, jobs, labels, nav, run_compare, session
from pages.ui.text import code, literal
from tl_core.use import compare
from tl_core.ops import runs
from tl_core.ops import words
from tl_core.use import run_facts

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

st.title("8 · Runs")
all_runs = jobs.visible_runs()  # a student's own runs; everyone's for the teacher
if not all_runs:
    nav.need_first("No runs yet: train a model first.", nav.TRAIN_PAGE, "4 · Train")


def default_selection() -> list[str]:
    """The session's run with its from-scratch twin when there is one, else the two newest finished runs."""
    if state.run_dir in all_runs:
        pretrained = compare.baseline_of(Path(state.run_dir))
        partner = (str(Path(state.run_dir).parent / pretrained) if pretrained
                   else str(compare.find_baseline(Path(state.run_dir)) or ""))
        if partner in all_runs:
            return [state.run_dir, partner]
    finished = [run_dir for run_dir in all_runs if runs.read_status(Path(run_dir)).get("state") == "done"]
    return (finished if len(finished) >= 2 else all_runs)[:2]


def delete_run(run_dir: str) -> None:
    """Delete one of the user's runs; a refusal is said on the next run of the page."""
    try:
        gate.space().delete_run(Path(run_dir))
    except (ValueError, OSError) as error:
        state.runs_delete_error = str(error)


def runs_table() -> list[dict]:
    """Every run in one table; returns their summaries."""
    summaries = [run_facts.summary(path) for path in all_runs]  # the same name, time and learnt count as Results
    table_rows = [{**row, "weights": labels.weights_label(row["weights"]) if row["weights"] else None,
                   "wall_s": words.format_seconds(row["wall_s"]) if row["wall_s"] is not None else None}
                  for row in summaries]
    # Formats by column, not a pandas Styler: marshalling a Styler cost 15 to 30 ms of server CPU a rerun.
    st.dataframe(
        pd.DataFrame(table_rows), hide_index=True, key="runs_table",
        placeholder="—",  # what a run has not measured (yet) reads "—", not "None"
        column_order=["name", "state", "val_acc", "validation", "target_acc", "adapt", "val_loss", "backbone",
                      "weights", "freeze", "learnt_params", "epochs", "augment", "dataset", "device", "wall_s",
                      "error", "damaged", "run_id"],
        column_config={
            "run_id": "Run id", "name": st.column_config.TextColumn("Name", width="medium"), "state": "State",
            "backbone": "Backbone", "weights": "Weights", "freeze": "Plan",
            "learnt_params": st.column_config.NumberColumn(
                "Learnt", format="localized",
                help="Parameters the kept model learnt (only the head's when the probe was kept)"),
            "epochs": st.column_config.NumberColumn("Epochs", format="%d"), "augment": "Augmentation",
            "dataset": "Dataset", "device": "Device",
            "val_acc": st.column_config.NumberColumn("Accuracy", format="percent"), "validation": "Validated by",
            "target_acc": st.column_config.NumberColumn("Target acc.", format="percent"),
            "adapt": "Adapted by", "val_loss": st.column_config.NumberColumn("Val. loss", format="%.3f"),
            "wall_s": st.column_config.TextColumn("Time", help="The whole run, from its start to its end"),
            "error": st.column_config.TextColumn("Error", width="large"),
            "damaged": st.column_config.TextColumn("Damaged files", width="large"),
        })
    return summaries


def damaged_section(summaries: list[dict]) -> None:
    """The runs with damaged files, each with a Delete button."""
    damaged = [row for row in summaries if row["damaged"]]
    if damaged:
        st.subheader("Damaged runs")
        st.caption("Some of their files are empty, cut short or not what they should be: the rest of the studio "
                   "ignores what cannot be read. Delete a run you no longer need.")
        for row in damaged:
            text_col, button_col = st.columns([5, 1], vertical_alignment="center")
            text_col.markdown(f"{code(row['run_id'])} {literal(row['state'])}: "
                              f"damaged: {literal(row['damaged'])}")
            button_col.button("Delete", key=f"delete::{row['run_id']}", icon=":material/delete:",
                              on_click=delete_run, args=(row["run_dir"],))
        if error := state.pop("runs_delete_error", None):
            st.error(literal(error))


def chosen_runs() -> list[str]:
    """The runs to compare (the session's run and its twin at first); stops the page below two."""
    st.subheader("Side by side")
    if any(path not in all_runs for path in state.get("runs_compare", [])):
        del state["runs_compare"]  # a run was deleted since
    if "runs_compare" not in state:
        state.runs_compare = default_selection()
    chosen = st.multiselect("Runs to compare", all_runs, key="runs_compare", format_func=labels.run_label,
                            help="Two or more: for example the same data with the head only and with more layers "
                                 "learning, or pretrained against from scratch.")
    if len(chosen) < 2:
        st.info("Choose two or more runs to compare them.", icon=":material/compare_arrows:")
        st.stop()
    return chosen


@st.fragment  # choosing runs to compare redraws the comparison alone, not the table of every run above it
def compare_section() -> None:
    """The chosen runs side by side."""
    run_compare.side_by_side(chosen_runs())


damaged_section(runs_table())
compare_section()
