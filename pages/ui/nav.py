"""The studio's pages by address, and the link that sends a user back to a step they skipped.

app.py registers these files with st.navigation; pages link to each other by the same names.
"""
from __future__ import annotations

import streamlit as st

BACKBONE_PAGE = "pages/1_Backbone.py"
DATA_PAGE = "pages/2_Data.py"
LAYERS_PAGE = "pages/3_Layers.py"
TRAIN_PAGE = "pages/4_Train.py"
RESULTS_PAGE = "pages/5_Results.py"
PREDICT_PAGE = "pages/6_Predict.py"
EXPORT_PAGE = "pages/7_Export.py"
RUNS_PAGE = "pages/8_Runs.py"
CLASS_PAGE = "pages/9_Class.py"


def need_first(message: str, page: str, label: str) -> None:
    """Say which earlier step to do first, link to it, and stop this page."""
    st.info(message)
    st.page_link(page, label=label, icon=":material/arrow_back:")
    st.stop()
