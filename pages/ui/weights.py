"""The Backbone page's weights: where the chosen backbone's come from (embedded, the hub, an uploaded
.safetensors file, none), whether they are on this computer, and a check that loads them now."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.models import backbones

from pages.ui import labels, widgets
from pages.ui.text import code, literal


def source_section() -> None:
    """Where the chosen backbone's weights come from; an upload is stored once, by its content."""
    state = st.session_state
    st.subheader(f"Weights for {code(state.backbone)}")
    sources = {"hub": "Download from the Hugging Face hub (needs the internet once; then cached)",
               "upload": "Upload a .safetensors file",
               "none": "No pretrained weights (train from scratch: needs far more images)"}
    if state.backbone == backbones.EMBEDDED_MODEL:
        sources = {"embedded": "Embedded: ships with the app, works offline", **sources}
    current_source = state.weights if state.weights in sources else "upload"
    if state.get("weights_source") not in sources:
        state.weights_source = current_source
    source = st.radio("Where the pretrained weights come from", list(sources), key="weights_source",
                      format_func=sources.get)

    if source == "upload":
        uploaded = st.file_uploader("Weights file (.safetensors)", type=["safetensors"], key="weights_upload")
        if uploaded is not None:
            saved = state.get("weights_upload_saved")  # (upload id, path): stored once per upload, not every rerun
            if not saved or saved[0] != uploaded.file_id:
                try:  # kept by content: another file of the same name never replaces weights a run already used
                    saved = state.weights_upload_saved = (
                        uploaded.file_id, str(backbones.store_uploaded_weights(uploaded.name, uploaded.getvalue())))
                except OSError as error:
                    widgets.show_error(error)
                    saved = None
            if saved:
                state.weights = saved[1]
        elif state.weights in ("embedded", "hub", "none"):
            st.info("Upload the weights file to use it.")
    else:
        state.weights = source


def check_section(on_loaded) -> None:
    """Whether the weights are on this computer, and a button that loads them now (then `on_loaded()`)."""
    state = st.session_state
    offline = backbones.weights_available_offline(state.backbone)
    if state.weights == "embedded" or (state.weights not in ("hub", "none") and Path(state.weights).is_file()):
        st.success(f"Weights available offline: yes ({literal(labels.weights_label(state.weights))}).",
                   icon=":material/check:")
    elif state.weights == "hub":
        if offline:
            st.success("Weights available offline: yes (already in the hub cache).", icon=":material/check:")
        else:
            st.warning("Weights available offline: no. They download once from the Hugging Face hub when you "
                       "check them below or start training; without internet, pick the embedded "
                       f"`{backbones.EMBEDDED_MODEL}` or upload a .safetensors file.", icon=":material/cloud_download:")
    elif state.weights == "none":
        st.info("Random weights: nothing to download, but expect much lower accuracy on a small dataset.")

    if st.button("Check these weights", key="check_weights", icon=":material/fact_check:",
                 help="Loads the backbone with these weights now (downloading them if needed), so training will not "
                      "fail later."):
        with st.spinner(f"Loading {literal(state.backbone)} with "
                        f"{literal(labels.weights_label(state.weights))} weights…"):
            try:
                backbones.create_model(state.backbone, num_classes=2, weights=state.weights)
            except widgets.USER_ERRORS + (RuntimeError,) as error:
                widgets.show_error(error)
            else:
                st.success("The weights load: ready to train.", icon=":material/check:")
                on_loaded()
