"""The Data page's webcam: each picture is guessed at once by prototypes of the pictures kept so far
(tl_core.fit.prototypes.LiveClassifier, one per session), so a user sees the classes take shape as they shoot."""
from __future__ import annotations

import streamlit as st

from tl_core.data import datasets
from tl_core.fit import prototypes
from tl_core.data.datasets import ImageRefused, open_image

from pages.ui import uploads
from pages.ui.text import literal


def live_guess(shot) -> dict | None:
    """This picture's features (computed once per picture) and the guess of the prototypes kept so far."""
    state = st.session_state
    if shot is None:
        return None
    if state.get("live_shot", {}).get("id") != shot.file_id:
        if "live" not in state:
            with st.spinner("Loading the backbone for live guesses…"):
                state.live = prototypes.LiveClassifier()
        try:
            image = open_image(shot.getvalue(), name="webcam picture")
        except ImageRefused:
            return None
        features = state.live.features(image)
        state.live_shot = {"id": shot.file_id, "image": image, "features": features,
                           "guess": state.live.predict(image, features)}
    return state.live_shot


def live_keep(live: dict | None, label: str) -> None:
    """The kept picture joins the live prototypes at once (its features are already computed)."""
    if live is not None and "live" in st.session_state:
        st.session_state.live.add(live["image"], label, live["features"])
        live["guess"] = st.session_state.live.predict(live["image"], live["features"])


def live_discard() -> None:
    """Forget the pictures in hand and the prototypes made of them."""
    st.session_state.webcam_shots.clear()
    for key in ("live", "live_shot"):
        st.session_state.pop(key, None)


def webcam_tab() -> None:
    """The Data page's webcam tab: pictures class by class, guessed live, then made a dataset."""
    state = st.session_state
    st.caption("Take pictures with your camera, class by class, then make a dataset of them.")
    webcam_class = st.text_input("Class of the next pictures", key="webcam_class", placeholder="e.g. thumbs up")
    shot = st.camera_input("Take a picture", key="webcam_shot")
    live = live_guess(shot)  # what the pictures kept so far make of this one, at once
    if live and live["guess"]:
        best = live["guess"][0]
        kept = len(state.webcam_shots)
        st.info(literal(f"Live guess from the {kept} picture{'s' if kept != 1 else ''} kept so far: "
                        f"{best['label']} ({best['prob']:.0%})"), icon=":material/bolt:")
    if shot is not None and st.button(f"Keep this picture as '{literal(webcam_class) or '?'}'",
                                      key="webcam_keep",
                                      disabled=not webcam_class.strip()):
        state.webcam_shots.append((f"webcam_{len(state.webcam_shots) + 1:03d}.jpg", shot.getvalue(),
                                   webcam_class.strip()))
        live_keep(live, webcam_class.strip())
    if state.webcam_shots:
        per_class: dict[str, int] = {}
        for _, _, label in state.webcam_shots:
            per_class[label] = per_class.get(label, 0) + 1
        st.markdown("Kept so far: " + ", ".join(f"**{literal(label)}** {n}" for label, n in per_class.items()))
        make_col, clear_col = st.columns(2)
        if make_col.button(f"Create a dataset of {len(state.webcam_shots)} pictures", key="webcam_create",
                           type="primary"):
            dataset = uploads.ingest(datasets.ingest_files, state.webcam_shots, name="webcam pictures")
            if dataset is not None:
                state.webcam_shots = []
                uploads.use_dataset(dataset)
        clear_col.button("Discard the pictures", key="webcam_clear", on_click=live_discard)
