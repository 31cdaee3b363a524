"""Several labels an image (a labels table) on the Data page: the upload of a zip holding the images and one
CSV, and the audit per task. Widgets only; tl_core.data.datasets.labels_table and tl_core.multitask do the work.

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import multitask
from tl_core import plots
from tl_core.data.datasets.labels_table import ingest_labelled_zip

from pages.ui import uploads
from pages.ui.text import literal


def upload_section() -> None:
    """The labels-table upload, folded under the classifier's ways in."""
    with st.expander("Several labels per image? A labels table (multi-task, multi-label)",
                     icon=":material/table_rows:"):
        upload_form()


def upload_form() -> None:
    """A zip holding images and a labels table, made the dataset of the next run."""
    st.markdown("A zip holding the images (any folders) and one `labels.csv`: the first row names the "
                "columns, the first column is each image's path relative to the CSV, every other column is a "
                "task (`file,category,colour`). A column named `tags` (or ending in `tags`) holds several "
                "tags an image, separated by `;`. One model learns every task, with a head each.")
    archive = st.file_uploader("A .zip with images and labels.csv", type=["zip"], key="table_zip_upload")
    if st.button("Use this zip and its table", key="table_zip_ingest", disabled=archive is None):
        dataset = uploads.ingest(ingest_labelled_zip, archive.getvalue(), name=Path(archive.name).stem)
        uploads.use_dataset(dataset)


def audit_section(dataset) -> None:
    """Per task: its images per class or tag, and what to watch out for."""
    st.caption(f"{len(dataset.items)} images, {len(dataset.tasks)} tasks from the labels table.")
    for note in dataset.notes:
        st.info(literal(note), icon=":material/info:")
    audits = multitask.audit_tasks(dataset)
    st.dataframe(pd.DataFrame([{"task": a["task"], "kind": a["kind"], "classes": len(a["counts"]),
                                "without a label": a["missing"], "largest ÷ smallest": round(a["imbalance_ratio"], 1)}
                               for a in audits]), hide_index=True, key="task_audit_table")
    for audit in audits:
        for warning in audit["warnings"]:
            st.warning(literal(warning), icon=":material/warning:")
    chosen = st.selectbox("Images per class of", [a["task"] for a in audits], key="task_audit_task")
    st.plotly_chart(plots.counts_figure(next(a for a in audits if a["task"] == chosen)["counts"]),
                    key="task_counts_chart")
    if dataset.refused:
        st.subheader("Refused files and rows")
        st.dataframe(dataset.refused, hide_index=True, key="refused_table",
                     column_config={"name": st.column_config.TextColumn("File or row", width="medium"),
                                    "reason": st.column_config.TextColumn("Why", width="large")})
