"""Step 4: set the hyper-parameters, start a run, and watch it learn live."""
from pathlib import Path

import streamlit as st

from pages.ui import common, target_domain
from tl_core import plots
from tl_core.fit import run_data
from tl_core.ops import runs, words
from tl_core.data import augment as augment_preview
from tl_core.config import AUGMENTATIONS, CLASS_WEIGHTS, PROBE_EPOCHS_BEFORE_FINETUNE, RunConfig

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
BATCH_SIZES = [8, 16, 32, 64, 128]
PREVIEW_IMAGES = 8
state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("4 · Train")
dataset = common.active_dataset()
if dataset is None:
    common.need_first("Choose your images first: training needs a dataset.", common.DATA_PAGE, "2 · Data")
try:
    common.sync_image_size()
    common.sync_lr()
    default_size, fixed_size = common.backbone_input_size(state.backbone)
except common.USER_ERRORS as error:
    common.show_error(error)
    common.need_first("Choose a backbone that builds first.", common.BACKBONE_PAGE, "1 · Backbone")
if not state.run_dir or not Path(state.run_dir).is_dir():  # a reload or a second tab finds the live run again
    active = common.newest_active_run()
    state.run_dir = str(active) if active else None

validation = run_data.planned_validation(dataset.labels(), state.freeze, state.augment, state.val_fraction,
                                         separate=state.val_source == "separate" and bool(state.val_dataset_dir))
st.markdown(f"**Data** {common.literal(common.dataset_label(dataset))}, {validation} · "
            f"**Backbone** {common.code(state.backbone)} ({common.literal(common.weights_label(state.weights))}) · "
            f"**Learns** {common.code(state.freeze)}")


@st.cache_data(show_spinner="Preparing preview images…", max_entries=8)
def decoded_for_preview(paths: tuple[str, ...], size: int):
    """The images decoded as training decodes them (cached: only the random changes differ per redraw)."""
    return augment_preview.decode(paths, size)


def start_run() -> None:
    """Queue a run with the choices of every page; the job manager starts it when the device is free."""
    try:
        config = RunConfig(
            dataset_dir=state.dataset_dir,
            val_dataset_dir=state.val_dataset_dir if state.val_source == "separate" else None,
            backbone=state.backbone, weights=state.weights, freeze=state.freeze, bn_policy=state.bn_policy,
            features=state.features, auto_budget=state.auto_budget,
            epochs=int(state.epochs), batch_size=int(state.batch_size), lr=float(state.lr), augment=state.augment,
            image_size=None if state.image_size == default_size else int(state.image_size),
            early_stopping=int(state.early_stopping), val_fraction=float(state.val_fraction),
            name=state.run_name.strip(), target_dir=state.target_dir, target_test_dir=state.target_test_dir,
            adapt=state.adapt, class_weights=state.class_weights)
        if state.val_source == "separate" and not state.val_dataset_dir:
            raise ValueError("validation: upload the separate validation set on the Data page, "
                             "or choose to hold out part of the images")
        state.run_dir = str(common.job_manager().submit(config))
    except common.USER_ERRORS + (OSError,) as error:  # a full disk names the file and the room needed
        state.start_error = str(error)


# ---------------------------------------------------------------- settings
run_status = runs.read_status(Path(state.run_dir)) if state.run_dir else {}
run_active = run_status.get("state") in common.ACTIVE_STATES
with st.expander("Settings", expanded=not run_active, icon=":material/tune:"):
    epochs_col, lr_col, batch_col = st.columns(3)
    epochs_col.number_input("Epochs", 1, 500, step=1, key="epochs",
                            help="How many times training goes through every image. More helps up to a point. "
                                 f"When layers learn, the new head is first fitted on frozen features for "
                                 f"{PROBE_EPOCHS_BEFORE_FINETUNE} more epochs (a second or so), so the progress "
                                 f"counts {PROBE_EPOCHS_BEFORE_FINETUNE} + these.")
    lr_col.select_slider("Learning rate", LEARNING_RATES, key="lr", format_func=lambda lr: f"{lr:g}",
                         help="How big each learning step is. It follows the plan chosen on the Layers page: "
                              "0.001 for the head alone, 0.0003 when the top layers learn, 0.0001 for all of them. "
                              "If training becomes unstable, it restarts once at a 10× lower rate.")
    batch_col.select_slider("Batch size", BATCH_SIZES, key="batch_size",
                            help="Images per step. Bigger is faster on a GPU and needs more memory.")
    size_col, stop_col, name_col = st.columns(3)
    size_col.number_input("Image size (px)", 32, 1024, step=16, key="image_size", disabled=fixed_size,
                          help=f"Images are resized to this square. The backbone learnt at {default_size} px; "
                               "smaller is much faster, larger sees finer detail.")
    stop_col.number_input("Early stopping patience (epochs)", 0, 100, step=1, key="early_stopping",
                          help="Stop when validation loss has not improved for this many epochs; 0 never stops early.")
    name_col.text_input("Run name (optional)", key="run_name", placeholder="e.g. first try",
                        help="A name to find this run again among the results.")
    st.radio("Augmentation", list(AUGMENTATIONS), key="augment", horizontal=True,
             format_func=augment_preview.PRESETS.get,
             help="Random changes to the training images make more varied examples and less over-fitting; "
                  "slower, because every epoch processes the images again. " + augment_preview.FLIP_WARNING)
    if state.augment in augment_preview.FLIPS:
        st.warning(augment_preview.FLIP_WARNING, icon=":material/flip:")
    if state.augment != "none":
        try:
            first_of_class = {}
            for item in dataset.items:
                first_of_class.setdefault(item["label"], str(dataset.root / item["path"]))
            pixels = decoded_for_preview(tuple(first_of_class.values())[:PREVIEW_IMAGES], int(state.image_size))
        except common.USER_ERRORS as error:
            common.show_error(error)
        else:
            st.caption("What training sees: the same images, randomly changed every epoch.")
            st.image(augment_preview.augmented(pixels, state.augment), width=110)
            st.button("Show other random changes", key="reshuffle_preview", icon=":material/shuffle:")
    st.radio("Class weighting", list(CLASS_WEIGHTS), key="class_weights", horizontal=True,
             format_func={"auto": "Auto: when the largest class has 3× the smallest's images or more",
                          "on": "On", "off": "Off"}.get,
             help="Weights each image's loss by 1/(its class's image count), so a class with few images counts "
                  "as much as a big one and the model leans less toward the big classes.")
    target_domain.adapt_choice()
    st.button("Start training", key="start_training", type="primary", icon=":material/play_arrow:",
              on_click=start_run)
    if error := state.pop("start_error", None):
        st.error(common.literal(error))


# ---------------------------------------------------------------- the run
def read_run_events(run_dir: str) -> list[dict]:
    """Every event so far; only new lines are read at each redraw (one reader per run and session)."""
    key = f"events::{run_dir}"
    if key not in state:
        state[key] = {"reader": runs.EventReader(Path(run_dir)), "events": []}
    state[key]["events"] += state[key]["reader"].read_new()
    return state[key]["events"]


def charts(run_dir: str, events: list[dict]) -> None:
    loss_col, accuracy_col = st.columns(2)
    loss_col.plotly_chart(plots.loss_figure(events), key=f"loss::{run_dir}")
    accuracy_col.plotly_chart(plots.accuracy_figure(events), key=f"accuracy::{run_dir}")
    if any(event.get("tasks") for event in events if event.get("event") == "epoch_end"):  # a multi-task run
        st.plotly_chart(plots.task_figure(events), key=f"tasks::{run_dir}")


@st.fragment(run_every=1.0)
def live_run(run_dir: str) -> None:
    """Redrawn every second while the run is queued or running, its header (with the state) included."""
    status = runs.read_status(Path(run_dir))
    if status.get("state") not in common.ACTIVE_STATES:
        st.rerun()  # the whole page: shows the outcome and stops this timer
    st.subheader(f"Run {common.literal(common.run_label(run_dir))}")
    events = read_run_events(run_dir)
    if status["state"] == "queued":
        position = common.job_manager().queue_position(Path(run_dir))
        where = f"in the queue (position {position})" if position else "for a free slot"
        wait_s = common.job_manager().expected_wait(Path(run_dir)) if position else None
        where += f", expected to start in about {words.format_seconds(wait_s)}" if wait_s else ""
        st.info(f"Waiting {where}: another run is using {common.device_name()}. "
                "This one starts when it ends.", icon=":material/hourglass_top:")
    fraction, text = words.progress(events, status)
    st.progress(fraction, text=text)
    notices = [e for e in events if e["event"] == "notice"]
    for notice in notices:
        if notice.get("kind") == "diverged":
            st.warning(common.literal(notice.get("message", "")), icon=":material/warning:")
    if notices:
        st.caption(common.literal(notices[-1].get("message", "")))
    st.button("Stop", key=f"stop::{run_dir}", icon=":material/stop:",
              on_click=common.job_manager().cancel, args=(Path(run_dir),))
    if any(e["event"] == "epoch_end" for e in events):
        charts(run_dir, events)


def finished_run(run_dir: str, status: dict) -> None:
    events = read_run_events(run_dir)
    if status.get("state") == "done":
        metrics = runs.read_metrics(Path(run_dir)) or {}
        st.success(f"Finished: final validation accuracy **{metrics.get('val_acc', 0):.1%}** "
                   f"(best epoch {metrics.get('best_epoch')}, {words.format_seconds(metrics.get('wall_s'))}).",
                   icon=":material/check_circle:")
        for notice in events:
            if notice["event"] == "notice" and notice.get("kind") == "diverged":
                st.warning(common.literal(notice.get("message", "")), icon=":material/warning:")
        if metrics.get("kept", {}).get("reason"):
            st.info(common.literal(metrics["kept"]["reason"] + "."), icon=":material/info:")
        st.page_link(common.RESULTS_PAGE, label="See the results: per class, confusion matrix, mistakes",
                     icon=":material/insights:")
    elif status.get("state") == "failed":
        st.error(f"The run failed: {common.literal(status.get('error') or 'no reason given')}")
    elif status.get("state") == "cancelled":
        st.warning("The run was stopped before it finished.", icon=":material/stop_circle:")
    elif status.get("state") == runs.DAMAGED:
        st.error(f"This run's files are damaged: {common.literal(status.get('error'))}. Delete it on the Runs page.")
        st.page_link(common.RUNS_PAGE, label="8 · Runs", icon=":material/table_chart:")
    if any(e["event"] == "epoch_end" for e in events):
        charts(run_dir, events)


if state.run_dir:
    common.show_run(state.run_dir)
    if run_active:
        live_run(state.run_dir)
    else:
        st.subheader(f"Run {common.literal(common.run_label(state.run_dir))}")
        finished_run(state.run_dir, run_status)
