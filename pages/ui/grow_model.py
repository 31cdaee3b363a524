"""The Results page's "Grow this model": a zip of class folders adds classes or images to a finished
classifier; only the head learns again (tl_core.use.grow)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.data import datasets
from tl_core.use import grow
from tl_core.ops import runs

from pages.ui import gate, jobs, nav, widgets


def grow_section(run_dir: Path) -> None:
    """The upload that grows the model, and how a grown run's old classes fared."""
    state = st.session_state
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
                    gate.check_room(zipped.getvalue())  # and their disk and dataset limits
                    added = datasets.ingest_zip(zipped.getvalue(), name=Path(zipped.name).stem, workspace=mine,
                                                min_classes=1)
                    config = grow.grown_config(run_dir, added, workspace=mine)
                state.run_dir = str(jobs.queue().submit(config))
                st.success("The grown model is training: watch it on the Train page.", icon=":material/check:")
                st.page_link(nav.TRAIN_PAGE, label="Watch it", icon=":material/model_training:")
            except widgets.USER_ERRORS as error:
                widgets.show_error(error)
    if old := runs.read_config_record(run_dir).get("old_classes"):
        st.caption(f"Grown from another run: the old classes' mean recall was {old['before']:.1%} and is "
                   f"{old['after']:.1%} now.")
