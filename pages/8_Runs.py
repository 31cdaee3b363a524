"""Step 8: every run of the workspace, and two or more side by side: what differs, and what it changed."""
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import common, gate
from tl_core.use import compare
from tl_core import plots
from tl_core.ops import runs, words

state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("8 · Runs")
all_runs = common.visible_runs()  # a student's own runs; everyone's for the teacher
if not all_runs:
    common.need_first("No runs yet: train a model first.", common.TRAIN_PAGE, "4 · Train")


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


def short_name(run_dir: str) -> str:
    """A legend entry: the run's name (or id), where its weights came from and what learnt."""
    row = words.summarize(Path(run_dir))
    return f"{row['name'] or row['run_id']} · {common.weights_label(row['weights'] or '?')}, learns {row['freeze']}"


def shown(setting: str, value) -> str:
    """A setting's value as text: the columns of the table mix numbers, words and flags."""
    if value is None:
        return "–"
    if setting == "val_acc":
        return f"{value:.1%}"
    if setting in ("macro_f1", "val_loss"):
        return f"{value:.3f}"
    if setting == "wall_s":
        return words.format_seconds(value)
    if setting == "weights":
        return common.weights_label(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def delete_run(run_dir: str) -> None:
    try:
        gate.space().delete_run(Path(run_dir))
    except (ValueError, OSError) as error:
        state.runs_delete_error = str(error)


summaries = [words.summarize(Path(path)) for path in all_runs]
table_rows = [{**row, "weights": common.weights_label(row["weights"]) if row["weights"] else None}
              for row in summaries]
runs_table = pd.DataFrame(table_rows).style.format(  # what a run has not measured (yet) reads "–", not "None"
    {"val_acc": "{:.1%}", "target_acc": "{:.1%}", "val_loss": "{:.3f}", "wall_s": words.format_seconds},
    na_rep="–")
st.dataframe(
    runs_table, hide_index=True, key="runs_table",
    column_order=["run_id", "name", "state", "val_acc", "validation", "target_acc", "adapt", "val_loss", "backbone",
                  "weights", "freeze", "epochs", "augment", "dataset", "device", "wall_s", "error", "damaged"],
    column_config={
        "run_id": "Run", "name": "Name", "state": "State", "backbone": "Backbone", "weights": "Weights",
        "freeze": "Learns", "epochs": "Epochs", "augment": "Augmentation", "dataset": "Dataset", "device": "Device",
        "val_acc": "Val. accuracy", "validation": "Validated by", "target_acc": "Target accuracy",
        "adapt": "Adapted by", "val_loss": "Val. loss", "wall_s": "Training time",
        "error": st.column_config.TextColumn("Error", width="large"),
        "damaged": st.column_config.TextColumn("Damaged files", width="large"),
    })

damaged = [row for row in summaries if row["damaged"]]
if damaged:
    st.subheader("Damaged runs")
    st.caption("Some of their files are empty, cut short or not what they should be: the rest of the studio "
               "ignores what cannot be read. Delete a run you no longer need.")
    for row in damaged:
        text_col, button_col = st.columns([5, 1], vertical_alignment="center")
        text_col.markdown(f"{common.code(row['run_id'])} {common.literal(row['state'])}: "
                          f"damaged: {common.literal(row['damaged'])}")
        button_col.button("Delete", key=f"delete::{row['run_id']}", icon=":material/delete:",
                          on_click=delete_run, args=(row["run_dir"],))
    if error := state.pop("runs_delete_error", None):
        st.error(common.literal(error))

st.subheader("Side by side")
if any(path not in all_runs for path in state.get("runs_compare", [])):
    del state["runs_compare"]  # a run was deleted since
if "runs_compare" not in state:
    state.runs_compare = default_selection()
chosen = st.multiselect("Runs to compare", all_runs, key="runs_compare", format_func=common.run_label,
                        help="Two or more: for example the same data with the head only and with more layers "
                             "learning, or pretrained against from scratch.")
if len(chosen) < 2:
    st.info("Choose two or more runs to compare them.", icon=":material/compare_arrows:")
    st.stop()

run_dirs = [Path(path) for path in chosen]
try:
    rows = compare.settings_table(run_dirs)
except ValueError as error:  # a damaged file of one of the runs: say which, compare nothing
    st.warning(f"These runs cannot be compared: {common.literal(error)}", icon=":material/broken_image:")
    st.stop()
labels = [common.run_label(path) for path in chosen]
table = pd.DataFrame([{"setting": row["setting"], **{label: shown(row["setting"], value)
                                                      for label, value in zip(labels, row["values"])},
                       "differs": row["differs"]} for row in rows])
st.caption("Rows that differ between the runs are highlighted.")
st.dataframe(
    table.style.apply(lambda row: ["background-color: rgba(255, 170, 0, 0.25)" if row["differs"] else ""] * len(row),
                      axis=1),
    hide_index=True, key="settings_table", height=36 * (len(table) + 1),
    column_config={"setting": "Setting", "differs": st.column_config.CheckboxColumn("Differs")})

for pretrained, other in ([run_dirs, run_dirs[::-1]] if len(run_dirs) == 2 else []):
    # a pretrained run and its from-scratch twin: say what transfer bought
    if compare.baseline_of(other) == pretrained.name:
        pretrained_metrics, baseline_metrics = runs.read_metrics(pretrained), runs.read_metrics(other)
        if pretrained_metrics and baseline_metrics:
            verdict = compare.transfer_verdict(pretrained_metrics, baseline_metrics)
            {"positive": st.success, "negative": st.warning}.get(verdict["kind"], st.info)(verdict["text"])

names = [short_name(path) for path in chosen]
curves = compare.curves(run_dirs, names if len(set(names)) == len(names) else labels)
accuracy_col, loss_col, train_loss_col = st.columns(3)
accuracy_col.plotly_chart(plots.compare_figure(curves, "val_acc"), key="compare_val_acc")
loss_col.plotly_chart(plots.compare_figure(curves, "val_loss"), key="compare_val_loss")
train_loss_col.plotly_chart(plots.compare_figure(curves, "train_loss"), key="compare_train_loss")
