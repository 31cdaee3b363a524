"""Uploads a user hands the Data page, made into datasets: folder and zip uploads of class folders, a folder
upload's files sorted into classes, ingest with a progress bar, and the dataset chosen for the next run.
"""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from tl_core.data import datasets

from pages.ui import gate, labels, widgets
from pages.ui.text import literal


def files_from_folder_upload(uploads) -> list[tuple[str, bytes, str, str]]:
    """Uploaded files of a folder of class folders → (name, bytes, class, sub-folder) for ingest_files.

    A folder upload names each file by its path below the chosen folder ("fashion/Bag/a.png").
    As for folders and zips, an optional single top folder wraps the class folders; a file that is
    in no class folder gets no class, so the engine refuses it with a reason. A file in a sub-folder
    of a class folder goes to that class, with the sub-folder named (the audit says so).
    """
    paths = [[part for part in upload.name.replace("\\", "/").split("/") if part not in ("", ".")]
             for upload in uploads]
    tops = {parts[0] for parts in paths if parts}
    depth = 1 if len(tops) == 1 and all(len(parts) >= 3 for parts in paths) else 0
    files = []
    for upload, parts in zip(uploads, paths):
        inner = parts[depth:]
        label = inner[0] if len(inner) >= 2 else ""
        files.append(("/".join(parts) or upload.name, upload.getvalue(), label, "/".join(inner[1:-1])))
    return files


def upload_name(uploads, fallback: str) -> str:
    """A dataset name from a folder upload's top folder."""
    for upload in uploads:
        parts = [p for p in upload.name.replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) > 1:
            return parts[0]
    return fallback or time.strftime("upload %Y-%m-%d %H:%M")


def ingest(action, *args, **kwargs) -> datasets.Dataset | None:
    """Run one tl_core ingest with a progress bar, into the user's own datasets folder; a user error becomes a
    message."""
    bar = st.progress(0.0, text="Checking images…")
    try:
        kwargs.setdefault("workspace", gate.space().data_workspace)  # the user's own datasets folder
        gate.check_room(*args)  # a classroom student's disk and dataset limits
        dataset = action(*args, progress=widgets.progress_callback(bar), **kwargs)
    except widgets.USER_ERRORS as error:
        widgets.show_error(error)
        return None
    finally:
        bar.empty()
    return dataset


def use_dataset(dataset: datasets.Dataset | None, key: str = "dataset_dir") -> None:
    """Make `dataset` the training (or validation) set and redraw the page with its audit."""
    if dataset is not None:
        st.session_state[key] = str(dataset.root)
        role = "validation set" if key == "val_dataset_dir" else "dataset"
        st.session_state.data_flash = f"Now using the {role} {literal(labels.dataset_label(dataset))}."
        st.rerun()


def ingest_copy(dataset: datasets.Dataset, **leave_out) -> datasets.Dataset | None:
    """A copy of `dataset` without some of its images (datasets.without); a user error becomes a message."""
    try:
        gate.check_room(dataset.root)
        return datasets.without(dataset, workspace=gate.space().data_workspace, **leave_out)
    except widgets.USER_ERRORS as error:
        widgets.show_error(error)
        return None


def upload_tabs(prefix: str, key: str) -> None:
    """Folder and zip uploads of class folders that make a dataset and store its folder under `key`."""
    folder_tab, zip_tab = st.tabs(["A folder of class folders", "A zip file"], key=f"{prefix}_upload_tab",
                                  on_change="rerun")  # keyed: a button's rerun keeps the tab the user is on
    with folder_tab:
        folder_files = st.file_uploader("Choose the folder that holds one folder per class",
                                        accept_multiple_files="directory", key=f"{prefix}_folder_upload")
        if st.button("Use these images", key=f"{prefix}_folder_ingest", disabled=not folder_files):
            files = files_from_folder_upload(folder_files)
            use_dataset(ingest(datasets.ingest_files, files, name=upload_name(folder_files, "")), key)
    with zip_tab:
        archive = st.file_uploader("A .zip with one folder per class", type=["zip"], key=f"{prefix}_zip_upload")
        if st.button("Use this zip", key=f"{prefix}_zip_ingest", disabled=archive is None):
            use_dataset(ingest(datasets.ingest_zip, archive.getvalue(), name=Path(archive.name).stem), key)
