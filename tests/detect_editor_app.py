"""A one-section Streamlit app for the browser test of the box editor: the detect kind's Data section alone, on
the box dataset named by DETECT_DATASET (before the pages dispatch to kind_detect)."""
import os

import streamlit as st

from pages.ui import kind_detect

if "dataset_dir" not in st.session_state and os.environ.get("DETECT_DATASET"):
    st.session_state["dataset_dir"] = os.environ["DETECT_DATASET"]
kind_detect.data_section()
