"""The user's choices for the next run, kept in st.session_state across pages and saved across reloads.

Every page calls init_state(); app.py restores the choices once per browser session and remembers them
after every page run (the user's state file, in their space).
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.models import backbones
from tl_core.config import defaults, recommended_lr
from tl_core.data.datasets import Dataset, DatasetError, load_dataset

from pages.ui import config_form, gate, kinds, models

RUN_DEFAULTS = defaults()  # RunConfig's own: the CLI and the app start from the same settings

# The choices that make a run, kept across pages. Widgets bound to these keys would lose their value
# when the user leaves their page (Streamlit cleans up widget state), so init_state() re-assigns them.
DEFAULTS = {
    "task": RUN_DEFAULTS["task"],  # what the model learns: a task kind (tl_core.kinds), chosen on the Data page
    "backbone": backbones.EMBEDDED_MODEL,
    "weights": "embedded",
    "dataset_dir": None,
    "val_dataset_dir": None,
    "target_dir": None,  # unlabelled images of where the model will be used (pages/ui/target_domain.py)
    "target_test_dir": None,
    "adapt": RUN_DEFAULTS["adapt"],
    "val_source": "split",
    "val_fraction": RUN_DEFAULTS["val_fraction"],
    "freeze": RUN_DEFAULTS["freeze"],
    "freeze_preset": RUN_DEFAULTS["freeze"] if RUN_DEFAULTS["freeze"] in ("auto", "head", "all") else "custom",
    "auto_budget": RUN_DEFAULTS["auto_budget"],
    "freeze_top_n": 1,
    "bn_policy": RUN_DEFAULTS["bn_policy"],
    "features": RUN_DEFAULTS["features"],
    "bn_keep_eval": True,
    "epochs": RUN_DEFAULTS["epochs"],
    "lr": recommended_lr(RUN_DEFAULTS["freeze"]),
    "lr_plan": RUN_DEFAULTS["freeze"],  # the freeze plan the learning rate was set for
    "batch_size": RUN_DEFAULTS["batch_size"],
    "image_size": None,  # set from the backbone on first use
    "image_size_backbone": None,  # the backbone image_size was set for
    "augment": RUN_DEFAULTS["augment"],
    "class_weights": RUN_DEFAULTS["class_weights"],
    "early_stopping": RUN_DEFAULTS["early_stopping"],
    "run_name": "",
    "run_dir": None,
    "webcam_shots": [],
    "manual_class_ids": [0, 1],
    **config_form.defaults(),  # the Train page's Advanced settings
}
# The choices a reload restores (the user's state file): everything above but the pictures in hand.
SAVED_KEYS = [key for key in DEFAULTS if key not in ("webcam_shots", "manual_class_ids")]


def init_state() -> None:
    """Give every shared key its default once, and keep widget-bound keys alive across pages."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = list(value) if isinstance(value, list) else value
        else:
            st.session_state[key] = st.session_state[key]  # stops Streamlit's widget clean-up


def restore_session() -> None:
    """Once per browser session: the choices this user made before a reload or a reconnect, still theirs."""
    if st.session_state.get("session_restored"):
        return
    saved = gate.space().check_restored({key: value for key, value in gate.space().load_state().items() if key in SAVED_KEYS})
    for key, value in saved.items():
        st.session_state[key] = value
    st.session_state.session_restored = True
    st.session_state.saved_choices = saved


def remember_session() -> None:
    """Write this user's choices to their state file when they changed (after every run of a page)."""
    state = st.session_state
    if not state.get("session_restored"):
        return
    choices = {key: state.get(key) for key in SAVED_KEYS}
    if choices != state.get("saved_choices"):
        try:
            gate.space().save_state(choices)
        except OSError:  # a full disk: the choices stay in this session; nothing else is lost
            return
        state.saved_choices = choices


def sync_lr() -> None:
    """Reset the learning rate to the plan's own when the freeze plan changed; a user's choice stays otherwise."""
    state = st.session_state
    if state.lr_plan != state.freeze:
        state.lr = recommended_lr(state.freeze)
        state.lr_plan = state.freeze


def sync_image_size() -> None:
    """Reset the image size to the backbone's own when the backbone changed."""
    state = st.session_state
    if state.image_size is None or state.image_size_backbone != state.backbone:
        state.image_size = models.backbone_input_size(state.backbone)[0]
        state.image_size_backbone = state.backbone


def active_dataset(key: str = "dataset_dir") -> Dataset | None:
    """The dataset chosen in session state, or None (also when its folder is gone, or is in the layout of a kind
    that keeps its own: see dataset_folder)."""
    root = st.session_state.get(key)
    if not root:
        return None
    if not gate.space().owns_dataset(root):
        st.session_state[key] = None
        return None
    try:
        return load_dataset(root)
    except DatasetError:
        if kinds.class_folders(kinds.current()):  # a kind with its own layout keeps its folder: no tl_core dataset
            st.session_state[key] = None
        return None


def dataset_folder() -> Path | None:
    """The next run's dataset folder, in any kind's layout; None when unset, gone, or not this user's."""
    root = st.session_state.get("dataset_dir")
    if not root or not Path(root).is_dir() or not gate.space().owns_dataset(root):
        return None
    return Path(root)
