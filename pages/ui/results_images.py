"""The Results page's look at a classifier's validation predictions: the scores per class, the clickable
confusion matrix and the images of a cell, the most confident mistakes (with heat maps on demand), and
whether its confidence can be trusted."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import multitask
from tl_core import plots
from tl_core.fit import metrics as evaluate
from tl_core.ops import runs
from tl_core.ops import glossary
from tl_core.ops.words import plural

from pages.ui import cached, data_quality, models, multitask_results, widgets
from pages.ui.text import literal

MISTAKES_SHOWN = 24
CELL_SHOWN = 48


def on_confusion_click() -> None:
    """A click on a confusion-matrix cell chooses that cell in the two select boxes below it."""
    state = st.session_state
    points = state.confusion_chart.selection.points
    if points and points[0].get("customdata"):
        state.cell_true, state.cell_predicted = points[0]["customdata"][:2]


def gallery(rows: list[dict], captions: list[str], run_dir: Path, heat_maps: bool) -> None:
    """The images of `rows`, or their heat maps: where the run's model looked to choose its class."""
    shown = []
    for row, caption in zip(rows, captions):
        if heat_maps:
            explained = models.explanation(str(run_dir), row["path"])
            image = explained["overlay"] if explained else None
            if explained and explained["class"] != row["predicted"]:
                caption += f" · final model: {explained['class']} ({explained['prob']:.0%})"
        else:
            image = cached.thumbnail_jpeg(row["path"], 128)
        if image is not None:
            shown.append((image, caption))
    if shown:
        st.image([image for image, _ in shown], width=128, caption=[literal(caption) for _, caption in shown],
                 output_format="PNG" if heat_maps else "JPEG")
    else:
        st.warning("The image files of this run's validation set are no longer on disk.")


def predictions_section(run_dir: Path, metrics: dict, events: list[dict], status: dict) -> None:
    """Per class, the confusion matrix, the images of a cell, the mistakes, then calibration."""
    state = st.session_state
    try:
        predictions = cached.from_folder(evaluate.read_predictions, run_dir)
    except Exception as error:  # a damaged predictions.csv: the rest of the results still show
        st.warning(f"predictions.csv cannot be read ({literal(error)}): the images are not shown.",
                   icon=":material/broken_image:")
        predictions = []
    task = None
    if metrics.get("tasks"):  # a multi-task run: its tasks side by side, then one task at a time below
        task = multitask_results.section(run_dir, metrics, events, status)
        metrics, predictions = multitask.task_view(metrics, predictions, task)
    classes = metrics.get("classes", [])
    if state.get("cell_run") != str(run_dir) or state.get("cell_true") not in classes \
            or state.get("cell_predicted") not in classes:  # a new run: start at its biggest confusion
        first = (classes[0], classes[0]) if classes else (None, None)
        state.cell_true, state.cell_predicted = evaluate.most_confused_pair(metrics) or first
        state.cell_run = str(run_dir)

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
            chosen = (state.cell_true, state.cell_predicted)
            figure = cached.figure(run_dir, lambda: widgets.clickable_confusion(plots.confusion_figure(metrics), metrics,
                                                                              chosen), "confusion", task, chosen)
            st.plotly_chart(figure, key="confusion_chart", on_select=on_confusion_click, selection_mode="points")
            st.caption("Click a cell to see its images below.")

    heat_maps = st.toggle("Show why (heat maps)", key="results_heatmaps",
                          help="Grad-CAM: red marks the parts of each image that made the model choose its "
                               "class. Computed once per image, then remembered.")
    cross_validated = runs.validation_kind(metrics) == "cv"
    if heat_maps and cross_validated:  # said in a box, not small print: two models answer in the galleries
        st.info("Two models answer here. The predictions, and so the mistakes, are cross-validated: each came "
                "from a head fitted without that image. The heat maps explain the final model, fitted on every "
                "image, which may get the image right: then its caption ends with the final model's answer "
                "(\"· final model: …\").", icon=":material/info:")

    st.subheader("Images of one cell of the confusion matrix")
    true_col, predicted_col = st.columns(2)
    true_col.selectbox("True class", classes, key="cell_true")
    predicted_col.selectbox("Predicted class", classes, key="cell_predicted")
    in_cell = evaluate.cell(predictions, state.cell_true, state.cell_predicted)
    if not in_cell:
        st.info(f"No validation image of {literal(state.cell_true)} was predicted as "
                f"{literal(state.cell_predicted)}.")
    else:
        verdict = "right" if state.cell_true == state.cell_predicted else "wrong"
        st.caption(f"{plural(len(in_cell), 'image')} of {literal(state.cell_true)} predicted as "
                   f"{literal(state.cell_predicted)} ({verdict}), "
                   f"the most confident first" + (f" (showing {CELL_SHOWN})" if len(in_cell) > CELL_SHOWN else "")
                   + ". Caption: file (confidence).")
        with st.spinner("Computing heat maps…") if heat_maps else nullcontext():
            gallery(in_cell[:CELL_SHOWN], [f"{Path(row['path']).name} ({row['confidence']:.0%})"
                                           for row in in_cell[:CELL_SHOWN]], run_dir, heat_maps)

    st.subheader("Validation images it got wrong, the most confident first")
    mistakes = evaluate.most_confidently_wrong(predictions, n=None)
    if not mistakes:
        st.success("None: every validation image was classified correctly.", icon=":material/celebration:")
    else:
        st.caption(f"{plural(len(mistakes), 'mistake')}, the most confident first"
                   + (f" (showing {MISTAKES_SHOWN})" if len(mistakes) > MISTAKES_SHOWN else "")
                   + (". Caption: true class → cross-validated prediction (confidence)" if cross_validated
                      else ". Caption: true class → predicted class (confidence)")
                   + (", then the final model's answer where it differs." if heat_maps and cross_validated else "."))
        with st.spinner("Computing heat maps…") if heat_maps else nullcontext():
            gallery(mistakes[:MISTAKES_SHOWN], [f"{row['label']} → {row['predicted']} ({row['confidence']:.0%})"
                                                for row in mistakes[:MISTAKES_SHOWN]], run_dir, heat_maps)
    data_quality.label_errors_section(run_dir)
    calibration_section(run_dir)


def calibration_section(run_dir: Path) -> None:
    """Whether a confidence of 80 % means right 80 % of the time."""
    st.subheader("Can you trust its confidence?")
    try:
        calibration = cached.from_folder(evaluate.run_calibration, run_dir)
    except Exception:  # a damaged predictions.csv, reported above
        calibration = {"count": 0, "text": "The saved predictions cannot be read: calibration is not measured."}
    if calibration["count"]:
        reliability_col, words_col = st.columns([3, 2])
        reliability_col.plotly_chart(cached.figure(run_dir, lambda: plots.reliability_figure(calibration["table"]),
                                                   "reliability"), key="reliability_chart")
        words_col.markdown(calibration["text"], help=glossary.explain("ECE"))
        words_col.caption("Each point is a group of images with about the same confidence; on the dotted line, "
                          "a model that says 80 % is right 80 % of the time.")
    else:
        st.info(calibration["text"])
