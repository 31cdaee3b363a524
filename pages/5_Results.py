"""Step 5: how good is the classifier, where does it go wrong, and how do the runs compare."""
import csv
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from tl_core import plots, runs

MISTAKES_SHOWN = 24
state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("5 · Results")
all_runs = [str(run_dir) for run_dir in runs.list_runs()]
if not all_runs:
    common.need_first("No runs yet: train a model first.", common.TRAIN_PAGE, "4 · Train")


def default_run() -> str:
    """The session's run, else the newest finished one, else the newest."""
    if state.run_dir in all_runs:
        return state.run_dir
    done = [run_dir for run_dir in all_runs if runs.read_status(Path(run_dir)).get("state") == "done"]
    return (done or all_runs)[0]


def wrong_predictions(run_dir: Path) -> list[dict]:
    """Validation images the model got wrong, the most confident mistakes first."""
    try:
        with open(run_dir / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    wrong = [row for row in rows if row["label"] != row["predicted"]]
    return sorted(wrong, key=lambda row: float(row["confidence"]), reverse=True)


if state.get("results_run") not in all_runs:
    state.results_run = default_run()
st.selectbox("Run", all_runs, key="results_run", format_func=common.run_label)
run_dir = Path(state.results_run)
status = runs.read_status(run_dir)
metrics = runs.read_metrics(run_dir)
events = runs.read_events(run_dir)

if status.get("state") in common.ACTIVE_STATES:
    st.info("This run is still training; its results appear when it ends.", icon=":material/hourglass_top:")
    st.page_link(common.TRAIN_PAGE, label="Watch it live", icon=":material/model_training:")
elif status.get("state") == "failed":
    st.error(f"The run failed: {status.get('error') or 'no reason given'}")
elif status.get("state") == "cancelled":
    st.warning("The run was stopped before it finished.", icon=":material/stop_circle:")

if metrics:
    accuracy_col, f1_col, loss_col, epoch_col, time_col, speed_col = st.columns(6)
    accuracy_col.metric("Validation accuracy", f"{metrics.get('val_acc', 0):.1%}")
    f1_col.metric("Macro F1", f"{metrics.get('macro_f1', 0):.3f}", help="F1 averaged over classes, each counting the same")
    loss_col.metric("Validation loss", f"{metrics.get('val_loss', float('nan')):.3f}")
    epoch_col.metric("Best epoch", f"{metrics.get('best_epoch', '–')} of {metrics.get('epochs_run', '–')}")
    time_col.metric("Training time", common.format_seconds(metrics.get("wall_s")))
    speed_col.metric("Images per second", f"{metrics.get('images_per_s', 0):,.0f}",
                     help="Training images processed per second")
    trained = (f"; {metrics['trainable_params']:,} of {metrics['total_params']:,} parameters learnt"
               if "trainable_params" in metrics else "")
    st.caption(f"Trained on {metrics.get('device', 'unknown device')}{trained}.")

    table_col, confusion_col = st.columns([1, 1])
    with table_col:
        st.subheader("Per class")
        per_class = pd.DataFrame([{"class": name, **scores} for name, scores in metrics.get("per_class", {}).items()])
        st.dataframe(per_class, hide_index=True, key="per_class_table", column_config={
            "class": "Class",
            "precision": st.column_config.NumberColumn("Precision", format="%.2f",
                                                       help="Of the images called this class, the share that are"),
            "recall": st.column_config.NumberColumn("Recall", format="%.2f",
                                                    help="Of the images of this class, the share found"),
            "f1": st.column_config.ProgressColumn("F1", min_value=0.0, max_value=1.0, format="%.2f"),
            "support": st.column_config.NumberColumn("Images", help="Validation images of this class"),
        })
    with confusion_col:
        if metrics.get("confusion"):
            st.plotly_chart(plots.confusion_figure(metrics), key="confusion_chart")

    st.subheader("Validation images it got wrong")
    mistakes = wrong_predictions(run_dir)
    if not mistakes:
        st.success("None: every validation image was classified correctly.", icon=":material/celebration:")
    else:
        st.caption(f"{len(mistakes)} mistakes, the most confident first"
                   + (f" (showing {MISTAKES_SHOWN})" if len(mistakes) > MISTAKES_SHOWN else "")
                   + ". Caption: true class → predicted class (confidence).")
        shown = [(common.thumbnail(row["path"], 128), row) for row in mistakes[:MISTAKES_SHOWN]]
        shown = [(image, row) for image, row in shown if image is not None]
        if shown:
            st.image([image for image, _ in shown], width=128, caption=[
                f"{row['label']} → {row['predicted']} ({float(row['confidence']):.0%})" for _, row in shown])
        else:
            st.warning("The image files of this run's validation set are no longer on disk.")
elif status.get("state") == "done":
    st.warning("This run has no metrics.json: its results were not saved.")

if any(event.get("event") == "epoch_end" for event in events):
    st.subheader("Training curves")
    loss_col, accuracy_col = st.columns(2)
    loss_col.plotly_chart(plots.loss_figure(events), key="results_loss_chart")
    accuracy_col.plotly_chart(plots.accuracy_figure(events), key="results_accuracy_chart")

st.header("All runs")
summaries = pd.DataFrame([runs.summarize(Path(path)) for path in all_runs])
st.dataframe(
    summaries, hide_index=True, key="runs_table",
    column_order=["run_id", "name", "state", "val_acc", "val_loss", "backbone", "weights", "freeze", "epochs",
                  "augment", "dataset", "device", "wall_s", "error"],
    column_config={
        "run_id": "Run", "name": "Name", "state": "State", "backbone": "Backbone", "weights": "Weights",
        "freeze": "Learns", "epochs": "Epochs", "augment": "Augmentation", "dataset": "Dataset", "device": "Device",
        "val_acc": st.column_config.NumberColumn("Val. accuracy", format="percent"),
        "val_loss": st.column_config.NumberColumn("Val. loss", format="%.3f"),
        "wall_s": st.column_config.NumberColumn("Seconds", format="%.0f"),
        "error": st.column_config.TextColumn("Error", width="large"),
    })
finished = [path for path in all_runs if runs.read_status(Path(path)).get("state") == "done"]
if len(finished) > 1:
    compared = st.multiselect("Compare validation accuracy of runs", finished, default=finished[:3],
                              key="compare_runs", format_func=common.run_label)
    if compared:
        curves = {common.run_label(path): runs.read_events(Path(path)) for path in compared}
        st.plotly_chart(plots.compare_figure(curves, "val_acc"), key="compare_chart")
