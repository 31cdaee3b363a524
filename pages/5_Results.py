"""Step 5: how good is the classifier, where and why does it go wrong, and did pretraining help."""
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import common, data_quality, gate, multitask_results, target_domain
from tl_core.use import advice, compare, grow
from tl_core.plan import auto_plan
from tl_core.data import datasets
from tl_core.fit import metrics as evaluate
from tl_core import multitask, plots
from tl_core.ops import runs, words

MISTAKES_SHOWN = 24
CELL_SHOWN = 48
state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("5 · Results")
all_runs = common.visible_runs()  # a student's own runs; everyone's for the teacher
if not all_runs:
    common.need_first("No runs yet: train a model first.", common.TRAIN_PAGE, "4 · Train")


def default_run() -> str:
    """The session's run, else the newest finished one, else the newest."""
    if state.run_dir in all_runs:
        return state.run_dir
    done = [run_dir for run_dir in all_runs if runs.read_status(Path(run_dir)).get("state") == "done"]
    return (done or all_runs)[0]


def on_confusion_click() -> None:
    """A click on a confusion-matrix cell chooses that cell in the two select boxes below it."""
    points = state.confusion_chart.selection.points
    if points and points[0].get("customdata"):
        state.cell_true, state.cell_predicted = points[0]["customdata"][:2]


def gallery(rows: list[dict], captions: list[str], run_dir: Path, heat_maps: bool) -> None:
    """The images of `rows`, or their heat maps: where the run's model looked to choose its class."""
    shown = []
    for row, caption in zip(rows, captions):
        if heat_maps:
            explained = common.explanation(str(run_dir), row["path"])
            image = explained["overlay"] if explained else None
            if explained and explained["class"] != row["predicted"]:
                caption += f" · final model: {explained['class']} ({explained['prob']:.0%})"
        else:
            image = common.thumbnail(row["path"], 128)
        if image is not None:
            shown.append((image, caption))
    if shown:
        st.image([image for image, _ in shown], width=128, caption=[common.literal(caption) for _, caption in shown])
    else:
        st.warning("The image files of this run's validation set are no longer on disk.")


def start_baseline(run_dir: Path) -> None:
    try:
        state.run_dir = str(compare.start_scratch_baseline(common.job_manager(), run_dir))
    except common.USER_ERRORS as error:
        state.baseline_error = str(error)


if state.get("results_run") not in all_runs:
    state.results_run = default_run()
st.selectbox("Run", all_runs, key="results_run", format_func=common.run_label)
run_dir = Path(state.results_run)
common.show_run(run_dir)
status = runs.read_status(run_dir)
metrics = runs.read_metrics(run_dir)
events = runs.read_events(run_dir)


@st.fragment(run_every=2.0)
def wait_for(watched: str, message: str) -> None:
    """`message` while the run `watched` is queued or running ("{run}", "{state}": its label and state, as they
    are now); the whole page again as soon as it ends."""
    state_now = runs.read_status(Path(watched)).get("state")
    if state_now not in common.ACTIVE_STATES:
        st.rerun()
    st.info(message.format(run=common.literal(common.run_label(watched)), state=state_now),
            icon=":material/hourglass_top:")


if status.get("state") in common.ACTIVE_STATES:
    wait_for(str(run_dir), "This run is still training; its results appear here when it ends.")
    st.page_link(common.TRAIN_PAGE, label="Watch it live", icon=":material/model_training:")
elif status.get("state") == "failed":
    st.error(f"The run failed: {common.literal(status.get('error') or 'no reason given')}")
elif status.get("state") == "cancelled":
    st.warning("The run was stopped before it finished.", icon=":material/stop_circle:")
for problem in runs.damage(run_dir):  # a damaged file is a message here, never a crash
    st.warning(f"Damaged: {common.literal(problem)}. Delete the run on the Runs page if it is of no use.",
               icon=":material/broken_image:")

if metrics:
    if warning := advice.headline(metrics, events):  # a weak or unstable run says so before any number
        st.warning(common.literal(warning), icon=":material/report:")
    accuracy_col, balanced_col, f1_col, loss_col, epoch_col, time_col, speed_col = st.columns(7)
    n_scored = metrics.get("n_val") or 0
    interval = (evaluate.accuracy_interval(metrics["val_acc"], n_scored)
                if isinstance(metrics.get("val_acc"), (int, float)) and n_scored else None)
    accuracy_col.metric("Mean task score" if metrics.get("tasks") else "Validation accuracy",
                        f"{metrics.get('val_acc', 0):.1%}",
                        delta=f"95 %: {interval[0]:.0%}–{interval[1]:.0%}" if interval else None,
                        delta_arrow="off", delta_color="off",
                        help=f"On {n_scored} validation images; with 95 % confidence the accuracy on more images "
                             "like these lies in the interval below it." if interval else None)
    if metrics.get("val_balanced_acc") is not None:
        balanced_col.metric("Balanced accuracy", f"{metrics['val_balanced_acc']:.1%}",
                            help="The mean of the classes' recalls: every class counts the same, however many "
                                 "images it has")
    f1_col.metric("Macro F1", f"{metrics.get('macro_f1', 0):.3f}", help="F1 averaged over classes, each counting the same")
    loss_col.metric("Validation loss", f"{metrics.get('val_loss', float('nan')):.3f}")
    epoch_col.metric("Best epoch", f"{metrics.get('best_epoch', '–')} of {metrics.get('epochs_run', '–')}")
    time_col.metric("Training time", words.format_seconds(metrics.get("wall_s"), short=True),
                    help=words.format_seconds(metrics.get("wall_s")))
    speed_col.metric("Images per second", f"{metrics.get('images_per_s', 0):,.0f}",
                     help="Training images processed per second")
    data_quality.imbalance_headline(metrics)
    target_domain.results_section(metrics)
    learnt = metrics.get("kept", {}).get("trainable_params", metrics.get("trainable_params"))
    total = metrics.get("total_params")
    trained = (f"; {learnt:,} of {total:,} parameters learnt"
               if isinstance(learnt, int) and isinstance(total, int) else "")
    if metrics.get("kept", {}).get("reason"):
        st.info(common.literal(str(metrics["kept"]["reason"]) + "."), icon=":material/info:")
    weights = runs.read_config_record(run_dir).get("config", {}).get("weights")
    started_from = f" Started from {common.literal(common.weights_label(weights))} weights." if weights else ""
    st.caption(f"Trained on {common.literal(metrics.get('device', 'unknown device'))}{trained}. "
               f"{common.validation_words(metrics)}{started_from}")
    record = runs.read_config_record(run_dir)
    if choice := record.get("features_choice"):
        st.caption(common.literal(choice["words"][:1].upper() + choice["words"][1:] + "."))
    if measured := auto_plan.read_measurement(run_dir):
        with st.expander(f"Auto plan: {measured['words'][:80]}…" if len(measured["words"]) > 80
                         else f"Auto plan: {measured['words']}"):
            st.plotly_chart(plots.plan_figure(measured), key="results_plan_chart")
            st.text(measured["words"])
    for step in advice.next_steps(metrics, events, record):
        st.warning(common.literal(step), icon=":material/lightbulb:")

    try:
        predictions = evaluate.read_predictions(run_dir)
    except Exception as error:  # a damaged predictions.csv: the rest of the results still show
        st.warning(f"predictions.csv cannot be read ({common.literal(error)}): the images are not shown.",
                   icon=":material/broken_image:")
        predictions = []
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
            figure = common.clickable_confusion(plots.confusion_figure(metrics), metrics,
                                                (state.cell_true, state.cell_predicted))
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
        st.info(f"No validation image of {common.literal(state.cell_true)} was predicted as "
                f"{common.literal(state.cell_predicted)}.")
    else:
        verdict = "right" if state.cell_true == state.cell_predicted else "wrong"
        st.caption(f"{len(in_cell)} images of {common.literal(state.cell_true)} predicted as "
                   f"{common.literal(state.cell_predicted)} ({verdict}), "
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
        st.caption(f"{len(mistakes)} mistakes, the most confident first"
                   + (f" (showing {MISTAKES_SHOWN})" if len(mistakes) > MISTAKES_SHOWN else "")
                   + (". Caption: true class → cross-validated prediction (confidence)" if cross_validated
                      else ". Caption: true class → predicted class (confidence)")
                   + (", then the final model's answer where it differs." if heat_maps and cross_validated else "."))
        with st.spinner("Computing heat maps…") if heat_maps else nullcontext():
            gallery(mistakes[:MISTAKES_SHOWN], [f"{row['label']} → {row['predicted']} ({row['confidence']:.0%})"
                                                for row in mistakes[:MISTAKES_SHOWN]], run_dir, heat_maps)
    data_quality.label_errors_section(run_dir)

    st.subheader("Can you trust its confidence?")
    try:
        calibration = evaluate.run_calibration(run_dir)
    except Exception:  # a damaged predictions.csv, reported above
        calibration = {"count": 0, "text": "The saved predictions cannot be read: calibration is not measured."}
    if calibration["count"]:
        reliability_col, words_col = st.columns([3, 2])
        reliability_col.plotly_chart(plots.reliability_figure(calibration["table"]), key="reliability_chart")
        words_col.markdown(calibration["text"])
        words_col.caption("Each point is a group of images with about the same confidence; on the dotted line, "
                          "a model that says 80 % is right 80 % of the time.")
    else:
        st.info(calibration["text"])
elif status.get("state") == "done":
    st.warning("This run has no metrics.json: its results were not saved.")

if any(event.get("event") == "epoch_end" for event in events):
    st.subheader("Training curves")
    loss_col, accuracy_col = st.columns(2)
    loss_col.plotly_chart(plots.loss_figure(events), key="results_loss_chart")
    accuracy_col.plotly_chart(plots.accuracy_figure(events), key="results_accuracy_chart")

if metrics and status.get("state") == "done":
    st.subheader("Did pretraining help?")
    config = runs.read_config_record(run_dir).get("config", {})
    twin_of = compare.baseline_of(run_dir)  # set when this run is itself a from-scratch baseline
    if twin_of:
        pretrained_dir, baseline = run_dir.parent / Path(str(twin_of)).name, run_dir
    else:
        pretrained_dir, baseline = run_dir, compare.find_baseline(run_dir)
    if config.get("weights") == "none" and not twin_of:
        st.caption("This run started from random weights itself: there is no pretraining to compare.")
    elif baseline is None:
        st.caption("Train the same network on the same images and budget from random weights, every layer "
                   "learning: the difference is what the pretrained weights bring.")
        st.button("Compare with training from scratch", key="start_baseline", icon=":material/compare_arrows:",
                  on_click=start_baseline, args=(run_dir,))
        if error := state.pop("baseline_error", None):
            st.error(common.literal(error))
    else:
        baseline_state = runs.read_status(baseline).get("state")
        pretrained_metrics, baseline_metrics = runs.read_metrics(pretrained_dir), runs.read_metrics(baseline)
        if baseline_state in common.ACTIVE_STATES:
            wait_for(str(baseline), "The from-scratch run {run} is {state}; the comparison appears here when it ends.")
            st.page_link(common.TRAIN_PAGE, label="Watch it on the Train page", icon=":material/model_training:")
        elif baseline_state == "done" and pretrained_metrics and baseline_metrics \
                and "val_acc" in pretrained_metrics and "val_acc" in baseline_metrics:
            verdict = compare.transfer_verdict(pretrained_metrics, baseline_metrics)
            {"positive": st.success, "negative": st.warning}.get(verdict["kind"], st.info)(verdict["text"])
            curves = compare.curves([pretrained_dir, baseline], ["pretrained", "from scratch"])
            st.plotly_chart(plots.compare_figure(curves, "val_acc"), key="transfer_chart")
            st.page_link(common.RUNS_PAGE, label="Compare the two runs setting by setting on the Runs page",
                         icon=":material/table_chart:")
        elif twin_of:
            st.caption(f"This run trained from scratch as the baseline of {common.literal(twin_of)}, "
                       "whose results are gone.")
        else:
            st.warning(f"The from-scratch run {common.literal(common.run_label(baseline))} ended without results "
                       f"({baseline_state}).", icon=":material/stop_circle:")
            st.button("Train from scratch again", key="start_baseline", icon=":material/replay:",
                      on_click=start_baseline, args=(run_dir,))

if metrics and status.get("state") == "done":
    data_quality.label_next_section(run_dir)
    with st.expander("Grow this model: add a class, or more images of one", icon=":material/add_circle:"):
        st.caption("A zip of class folders: a new folder name adds a class, an existing one adds images to it. "
                   "Only the head learns again, on the backbone's frozen features (the images it already had "
                   "are not passed through the backbone again); the Results of the new run compare the old "
                   "classes' recall before and after.")
        zipped = st.file_uploader("Zip of class folders", type=["zip"], key="grow_zip")
        if zipped is not None and st.button("Grow the model", key="grow_start", icon=":material/add_circle:"):
            try:
                with st.spinner("Checking the images and computing the new ones' features…"):
                    mine = gate.space().data_workspace  # a classroom user's own datasets folder
                    added = datasets.ingest_zip(zipped.getvalue(), name=Path(zipped.name).stem, workspace=mine,
                                                min_classes=1)
                    config = grow.grown_config(run_dir, added, workspace=mine)
                state.run_dir = str(common.job_manager().submit(config))
                st.success("The grown model is training: watch it on the Train page.", icon=":material/check:")
                st.page_link(common.TRAIN_PAGE, label="Watch it", icon=":material/model_training:")
            except common.USER_ERRORS as error:
                common.show_error(error)
    if old := runs.read_config_record(run_dir).get("old_classes"):
        st.caption(f"Grown from another run: the old classes' mean recall was {old['before']:.1%} and is "
                   f"{old['after']:.1%} now.")

st.page_link(common.RUNS_PAGE, label="All runs, side by side", icon=":material/table_chart:")
