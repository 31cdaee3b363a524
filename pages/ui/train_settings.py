"""The Train page's settings and its Start button: the hyper-parameters, augmentation (with a preview), class
weighting, adaptation, the Advanced settings built from RunConfig's metadata, and the run they make."""
from __future__ import annotations

import streamlit as st

from tl_core.data import augment as augment_preview
from tl_core.config import AUGMENTATIONS, CLASS_WEIGHTS, PROBE_EPOCHS_BEFORE_FINETUNE, RunConfig

from pages.ui import config_form, jobs, kinds, target_domain, widgets
from pages.ui.text import literal

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
BATCH_SIZES = [8, 16, 32, 64, 128]
PREVIEW_IMAGES = 8


@st.cache_data(show_spinner="Preparing preview images…", max_entries=8)
def decoded_for_preview(paths: tuple[str, ...], size: int):
    """The images decoded as training decodes them (cached: only the random changes differ per redraw)."""
    return augment_preview.decode(paths, size)


def start_run(default_size: int) -> None:
    """Queue a run with the choices of every page; the job queue starts it when the device is free."""
    state = st.session_state
    try:
        config = RunConfig(
            task=kinds.current(),
            dataset_dir=state.dataset_dir,
            val_dataset_dir=state.val_dataset_dir if state.val_source == "separate" else None,
            backbone=state.backbone, weights=state.weights, freeze=state.freeze, bn_policy=state.bn_policy,
            features=state.features, auto_budget=state.auto_budget,
            epochs=int(state.epochs), batch_size=int(state.batch_size), lr=float(state.lr), augment=state.augment,
            image_size=None if state.image_size == default_size else int(state.image_size),
            early_stopping=int(state.early_stopping), val_fraction=float(state.val_fraction),
            name=state.run_name.strip(), target_dir=state.target_dir, target_test_dir=state.target_test_dir,
            adapt=state.adapt, class_weights=state.class_weights,
            kind_options=dict(state.get(f"{kinds.current()}_options") or {}),  # a kind's own (its Layers section)
            **config_form.values())
        if state.val_source == "separate" and not state.val_dataset_dir:
            raise ValueError("validation: upload the separate validation set on the Data page, "
                             "or choose to hold out part of the images")
        state.run_dir = str(jobs.queue().submit(config))
    except widgets.USER_ERRORS + (OSError,) as error:  # a full disk names the file and the room needed
        state.start_error = str(error)


def basics(default_size: int, fixed_size: bool) -> None:
    """Epochs, learning rate, batch size, image size, early stopping and the run's name."""
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
    name_col.text_input("Run name (optional)", key="run_name", placeholder="default: plan · dataset · accuracy",
                        help="A name to find this run again among the results. Left empty, the run is called by "
                             "its plan, its dataset and its accuracy (\"Auto · materials · 98.6%\"); rename it any "
                             "time on the Results page.")


def augmentation(dataset) -> None:
    """The augmentation preset, with what training will see of the first image of each class."""
    state = st.session_state
    st.radio("Augmentation", list(AUGMENTATIONS), key="augment", horizontal=True,
             format_func=augment_preview.PRESETS.get,
             help="Random changes to the training images make more varied examples and less over-fitting; "
                  "slower, because every epoch processes the images again. " + augment_preview.FLIP_WARNING)
    if state.augment in augment_preview.FLIPS:
        st.warning(augment_preview.FLIP_WARNING, icon=":material/flip:")
    if state.augment == "none" or dataset is None:
        return
    try:
        first_of_class = {}
        for item in dataset.items:
            first_of_class.setdefault(item["label"], str(dataset.root / item["path"]))
        pixels = decoded_for_preview(tuple(first_of_class.values())[:PREVIEW_IMAGES], int(state.image_size))
    except widgets.USER_ERRORS as error:
        widgets.show_error(error)
    else:
        st.caption("What training sees: the same images, randomly changed every epoch.")
        st.image(augment_preview.augmented(pixels, state.augment), width=110)
        st.button("Show other random changes", key="reshuffle_preview", icon=":material/shuffle:")


def class_weighting() -> None:
    """Whether small classes weigh as much as big ones in the loss."""
    st.radio("Class weighting", list(CLASS_WEIGHTS), key="class_weights", horizontal=True,
             format_func={"auto": "Auto: when the largest class has 3× the smallest's images or more",
                          "on": "On", "off": "Off"}.get,
             help="Weights each image's loss by 1/(its class's image count), so a class with few images counts "
                  "as much as a big one and the model leans less toward the big classes.")


def settings_section(dataset, default_size: int, fixed_size: bool, run_active: bool) -> None:
    """Every setting in one expander (open while no run is live), then the Start button."""
    state = st.session_state
    with st.expander("Settings", expanded=not run_active, icon=":material/tune:"):
        basics(default_size, fixed_size)
        augmentation(dataset)
        if dataset is not None:  # a kind with its own data layout has no classes to weigh
            class_weighting()
        target_domain.adapt_choice()
        with st.popover("Advanced settings", icon=":material/settings:"):
            st.caption("RunConfig's own settings, as the command line names them (`python -m tl_core train --help`).")
            config_form.form()
        st.button("Start training", key="start_training", type="primary", icon=":material/play_arrow:",
                  on_click=start_run, args=(default_size,))
        if error := state.pop("start_error", None):
            st.error(literal(error))
