"""The multi-task kind in the app (several labels per image, from a labels table): its Data page.

Only data_section is its own: the Layers, Train, Results, Predict and Export pages are the classifier's,
which read the tasks from the dataset and the run (pages/ui/multitask_data.py, multitask_results.py,
tl_core.use.predict's task answers). Contract of this module: pages/ui/kinds.py.
"""
from __future__ import annotations

import streamlit as st

from tl_core.data import datasets

from pages.ui import data_audit, multitask_data, session


def data_section() -> None:
    """A zip of images with a labels table, checked per task, and how to validate."""
    multitask_data.upload_form()
    dataset = session.active_dataset()
    if dataset is None:
        st.info("No labels table yet: upload a zip of images with its labels.csv above.")
        return
    if not dataset.tasks:
        st.warning("This dataset has one class per image, from its folders, and no labels table: upload a zip "
                   "with a labels.csv, or choose to classify images.", icon=":material/table_rows:")
        return
    val_dataset = session.active_dataset("val_dataset_dir") if st.session_state.val_source == "separate" else None
    report = datasets.audit(dataset, val_dataset)
    data_audit.audit_section(dataset, report)
    data_audit.validation_section(report, val_dataset)
