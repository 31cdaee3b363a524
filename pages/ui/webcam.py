"""The Data page's webcam: each picture is guessed at once by prototypes of the pictures kept so far
(tl_core.prototypes.LiveClassifier, one per session), so a user sees the classes take shape as they shoot."""
from __future__ import annotations

import streamlit as st

from tl_core import prototypes
from tl_core.datasets import ImageRefused, open_image


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
