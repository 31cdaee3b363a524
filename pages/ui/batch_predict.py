"""The Predict page's many pictures at once: zips opened into their pictures, a table of every picture's prediction
with 'looks like none of these' (tl_core.use.novelty), and its CSV to download."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from tl_core.data.datasets import DatasetError
from tl_core.use import batch, novelty

from pages.ui.text import literal

DETAILED = 12  # pictures shown one by one with their heat maps; every picture is in the table


class Picture(NamedTuple):
    """A picture taken out of an uploaded zip, answering as an uploaded file does (name, getvalue)."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def expand(uploads: list) -> list:
    """Uploaded files, each zip replaced by its pictures; members a zip refuses are said with their reasons."""
    files = []
    for upload in uploads:
        if not upload.name.lower().endswith(".zip"):
            files.append(upload)
            continue
        try:
            pictures, refused = batch.zip_pictures(upload.getvalue(), upload.name)
        except DatasetError as error:
            st.warning(literal(error), icon=":material/block:")
            continue
        files += [Picture(f"{upload.name}/{name}", data) for name, data in pictures]
        for member in refused:
            st.warning(literal(f"{upload.name}/{member['name']}: {member['reason']}; skipped."), icon=":material/block:")
    if len(files) > batch.MAX_PICTURES:
        st.warning(f"{len(files):,} pictures: the first {batch.MAX_PICTURES} are predicted here; the rest are not "
                   "(predict them with `python -m tl_core predict RUN FILES --json`).", icon=":material/block:")
    return files[:batch.MAX_PICTURES]


@st.cache_resource(show_spinner="Measuring the training pictures once, to tell pictures unlike all of them…",
                   max_entries=3)
def novelty_model(run_dir: str, _predictor) -> novelty.Novelty | str:
    """The run's novelty model (computed once and kept in the run folder), or why there is none, in words."""
    try:
        return novelty.novelty_of(run_dir, _predictor)
    except (ValueError, OSError) as error:  # no training pictures left to compare with: said, and predict goes on
        return str(error)


def section(run_dir, model, accepted: list, probabilities) -> list:
    """The table of every picture's prediction and its CSV; which pictures look like none of the classes
    (None each when that cannot be measured, or for a multi-task model, whose answers are per task)."""
    if model.layout is not None or not accepted:
        return [None] * len(accepted)
    unknown = novelty_model(str(run_dir), model)
    scores = unlike = None
    if isinstance(unknown, novelty.Novelty):
        scores = unknown.score_images(model, [image for _, image in accepted])
        unlike = unknown.unlike(scores)
    rows = batch.prediction_rows([upload.name for upload, _ in accepted], probabilities, model.classes, scores, unlike)
    if len(accepted) > 1:
        st.subheader(f"{len(accepted)} pictures")
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="predict_table", column_config={
            "file": st.column_config.TextColumn("Picture"), "predicted": "Predicted",
            "probability": st.column_config.NumberColumn("Probability", format="percent"),
            "second": "Second guess",
            "second_probability": st.column_config.NumberColumn("Its probability", format="percent"),
            "unlike_training": st.column_config.CheckboxColumn("Looks like none of these"),
            "distance": st.column_config.NumberColumn("Distance to training", format="%.3f")})
        st.download_button("Download the predictions (CSV)", batch.rows_csv(rows), file_name=f"{Path(run_dir).name}-predictions.csv",
                           mime="text/csv", key="predict_csv", icon=":material/download:")
    if isinstance(unknown, novelty.Novelty):
        st.caption(f"Looks like none of these: {unknown.sentence()}")
    else:
        st.caption(f"'Looks like none of these' is not measured: {literal(unknown)}.")
    if len(accepted) > DETAILED:
        st.caption(f"Heat maps are drawn for the first {DETAILED} pictures; every picture is in the table.")
    return [bool(flag) for flag in unlike] if unlike is not None else [None] * len(accepted)
