"""The sidebar: the choices the next run will take, the run the page shows, who is signed in, the device.

app.py draws it before the page and again, in its place, after it (see app.py for why).
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.ops import runs

from pages.ui import gate, jobs, kinds, labels, session
from pages.ui.text import code, literal


def show_run(run_dir) -> None:
    """Tell the sidebar which run this page shows (the sidebar is drawn after the page, so it never lags)."""
    st.session_state.shown_run = str(run_dir) if run_dir else None


def draw(slot) -> None:
    """In `slot` (a sidebar container, drawn again after the page ran): the choices the next run will take, kept
    apart from the run the page shows, which may have been trained with other choices; and the device."""
    state = st.session_state
    with slot:
        if (user := gate.space().user) is not None:
            st.caption(f"Signed in as {literal(user)}" + (" (teacher)" if gate.space().teacher else "")
                       + ": keep this page's address to come back.")
        st.markdown("**Next run** (your choices so far)")
        st.markdown(f":material/neurology: Backbone: {code(state.backbone)}  \n"
                    f":material/key: Weights: {literal(labels.weights_label(state.weights))}")
        dataset, folder = session.active_dataset(), session.dataset_folder()
        data = labels.dataset_label(dataset) if dataset else folder.name if folder else None
        st.markdown(f":material/photo_library: Data: {literal(data) if data else '*not chosen yet*'}")
        offered = {choice.name: choice.title for choice in kinds.choices()}
        if len(offered) > 1:  # what the model learns, once there is a choice
            st.markdown(f":material/category: Task: {literal(offered[kinds.current()])}")
        st.markdown(f":material/layers: Trains: {code(state.freeze)}")
        shown = state.get("shown_run")
        latest = state.run_dir if state.run_dir and Path(state.run_dir).is_dir() else None
        if shown and Path(shown).is_dir():
            plan = runs.read_config_record(Path(shown)).get("config", {}).get("freeze")
            st.markdown(f":material/visibility: **Showing run**: {literal(labels.run_label(shown))}"
                        + (f", trained {code(plan)}" if plan else ""))
        elif latest:
            st.markdown(f":material/model_training: **Your latest run**: {literal(labels.run_label(latest))}")
        else:
            st.markdown(":material/model_training: **Runs**: *none yet*")
        st.caption(f"Device: {jobs.device_name()}")
