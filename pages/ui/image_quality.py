"""The Data page's image-quality warnings: blank, blurry and enlarged pictures, each named with its reason
(tl_core.quality.image_checks); nothing is dropped, the person decides."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core.data import datasets
from tl_core.quality import image_checks

from pages.ui import widgets
from pages.ui.text import literal

SHOWN = 12
DEFAULT_INPUT_SIZE = 224  # before a backbone is chosen: the input size of most catalogue models


@st.cache_data(show_spinner="Looking at every picture for blank, blurry and enlarged ones…", max_entries=256)
def findings(dataset_root: str, dataset_id: str, input_size: int) -> list[dict]:
    """The findings of one dataset version at one input size (a dataset never changes: its id keys the cache)."""
    return image_checks.image_findings(datasets.load_dataset(dataset_root), input_size)


def section(dataset: datasets.Dataset) -> None:
    """A warning per kind of problem, a table of every picture concerned, and the first few of them."""
    input_size = int(st.session_state.get("image_size") or DEFAULT_INPUT_SIZE)
    found = findings(str(dataset.root), dataset.id, input_size)
    if not found:
        return
    for sentence in image_checks.summary(found):
        st.warning(literal(sentence), icon=":material/image_not_supported:")
    with st.expander(f"Pictures to look at again ({len(found)})", icon=":material/image_search:"):
        st.caption(f"Enlarged is judged against the model's input size, {input_size} px.")
        st.dataframe(pd.DataFrame(found), hide_index=True, key="image_quality_table", column_config={
            "path": st.column_config.TextColumn("Picture"), "label": st.column_config.TextColumn("Class"),
            "problem": "Problem", "reason": st.column_config.TextColumn("Why", width="large")})
        shown = [(widgets.thumbnail(str(Path(dataset.root) / "images" / f["path"]), 96), f"{f['path']}: {f['problem']}")
                 for f in found if f["problem"] in ("blank", "blurry")][:SHOWN]
        shown = [(image, caption) for image, caption in shown if image is not None]
        if shown:
            st.image([image for image, _ in shown], width=96, caption=[literal(caption) for _, caption in shown])
