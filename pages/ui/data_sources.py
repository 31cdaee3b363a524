"""Where a classifier's labelled images come from on the Data page: the bundled sample, a folder or zip of class
folders, images dropped class by class, the webcam, or a dataset made before."""
from __future__ import annotations

import streamlit as st

from tl_core.data import datasets
from tl_core.data.sample_data import SAMPLE_DIR

from pages.ui import gate, labels, multitask_data, uploads, webcam, widgets
from pages.ui.text import literal

SAMPLE_NAME = "Fashion sample"


def sample_dataset() -> datasets.Dataset | None:
    """The bundled sample, ingested once per workspace."""
    for dataset in datasets.list_datasets(gate.space().data_workspace):
        if dataset.source.get("path") == str(SAMPLE_DIR.resolve()) and dataset.name == SAMPLE_NAME:
            return dataset
    return uploads.ingest(datasets.ingest_folder, SAMPLE_DIR, name=SAMPLE_NAME)


def bring_images() -> None:
    """The sample, then every way to bring one's own images, one tab each; a labels table below them."""
    if st.button("Try the sample dataset", key="use_sample", type="primary", icon=":material/auto_awesome:",
                 help="300 Fashion-MNIST pictures of clothes, 10 classes: everything works offline."):
        uploads.use_dataset(sample_dataset())

    st.subheader("Or bring your own")
    # Keyed tabs track which one is open: without a key, a button's rerun showed the first tab again.
    folder_zip_tab, per_class_tab, webcam_tab, earlier_tab = st.tabs(
        [":material/folder_zip: Folder or zip", ":material/category: Images per class",
         ":material/photo_camera: Webcam", ":material/history: Earlier datasets"],
        key="data_source_tab", on_change="rerun")
    with folder_zip_tab:
        uploads.upload_tabs("train", "dataset_dir")
    with per_class_tab:
        per_class()
    with webcam_tab:
        webcam.webcam_tab()
    with earlier_tab:
        if earlier_tab.open is not False:  # read every manifest only when the tab shows (the others keep widgets)
            earlier_datasets()
    multitask_data.upload_section()


def _add_class() -> None:
    ids = st.session_state.manual_class_ids
    ids.append(max(ids, default=-1) + 1)


def per_class() -> None:
    """A name and an uploader per class, as many classes as the user adds."""
    state = st.session_state
    st.caption("Name each class and drop its images.")
    st.text_input("Dataset name", key="per_class_name", placeholder="e.g. my pets",
                  help="To find it again among your datasets; left empty, it is named by the date.")
    for class_id in state.manual_class_ids:
        name_col, files_col = st.columns([1, 3])
        class_name = name_col.text_input("Class name", key=f"class_name_{class_id}", placeholder="e.g. cats")
        files_col.file_uploader(f"Images of {literal(class_name) if class_name else 'this class'}",
                                accept_multiple_files=True,
                                key=f"class_files_{class_id}")
    add_col, create_col = st.columns([1, 3])
    add_col.button("Add a class", key="add_class", icon=":material/add:", on_click=_add_class)
    if create_col.button("Create the dataset", key="create_per_class", type="primary"):
        files = [(upload.name, upload.getvalue(), state.get(f"class_name_{class_id}", "").strip())
                 for class_id in state.manual_class_ids for upload in state.get(f"class_files_{class_id}") or []]
        if not files:
            st.warning("Drop some images first.")
        else:
            uploads.use_dataset(uploads.ingest(datasets.ingest_files, files,
                                               name=state.get("per_class_name", "").strip() or None))


def earlier_datasets() -> None:
    """The user's datasets made before: use one again, or delete it."""
    state = st.session_state
    earlier = {str(d.root): d for d in datasets.list_datasets(gate.space().data_workspace)}
    if not earlier:
        st.caption("No datasets yet.")
        return
    chosen_root = st.selectbox("Datasets you added before", list(earlier), key="earlier_dataset",
                               format_func=lambda root: f"{labels.dataset_label(earlier[root])} · "
                                                        f"{earlier[root].created}")
    use_col, delete_col = st.columns(2)
    if use_col.button("Use this dataset", key="use_earlier"):
        uploads.use_dataset(earlier[chosen_root])
    if delete_col.button("Delete this dataset", key="delete_earlier", icon=":material/delete:"):
        try:  # only one's own: tl_core.ops.spaces refuses anyone else's, and one a live run needs
            gate.space().delete_dataset(chosen_root)
        except widgets.USER_ERRORS + (OSError,) as error:
            widgets.show_error(error)
        else:
            for key in ("dataset_dir", "val_dataset_dir"):
                if state[key] == chosen_root:
                    state[key] = None
            st.rerun()
