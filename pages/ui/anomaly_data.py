"""The anomaly kind's Data page: good images (and a few defects, with or without masks) brought in and audited."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.ui import gate, uploads, widgets
from pages.ui.text import literal
from tl_core.anomaly import data as anomaly_data
from tl_core.data.datasets import load_dataset

state = st.session_state

def _use(action, *args, **kwargs) -> None:
    """Run one ingest; the dataset becomes the session's, or the user reads why not."""
    try:
        gate.check_room(*args)  # a classroom student's disk and dataset limits
        with st.spinner("Checking every image…"):
            dataset = action(*args, workspace=gate.space().data_workspace, **kwargs)
    except widgets.USER_ERRORS as error:
        widgets.show_error(error)
        return
    state["dataset_dir"] = str(dataset.root)
    state["anomaly_flash"] = f"Now using {literal(dataset.name)}: {len(dataset.items)} images."


def data_section() -> None:
    """Good images (a folder, a zip, files or the webcam), optionally a few defects with masks; then the audit."""
    st.write("Give pictures of **good** parts, slides or samples only: at least 5, better 20 or more. "
             "The model learns what normal looks like and flags anything else. A few defect images (with masks, "
             "if you have them) are optional: they set the threshold and show how well it works.")
    if flash := state.pop("anomaly_flash", None):
        st.success(flash, icon=":material/check:")
    files_tab, folder_tab, zip_tab, webcam_tab = st.tabs(
        [":material/image: Good images", ":material/folder: A folder", ":material/folder_zip: A zip",
         ":material/photo_camera: Webcam"], key="anomaly_source_tab", on_change="rerun")
    with files_tab:
        good = st.file_uploader("Good images", accept_multiple_files=True, key="anomaly_good_files")
        with st.expander("A few defect images (optional)", icon=":material/report:"):
            defect_type = st.text_input("Defect type", key="anomaly_defect_type", placeholder="e.g. scratch")
            defects = st.file_uploader("Defect images", accept_multiple_files=True, key="anomaly_defect_files")
            masks = st.file_uploader("Their masks (optional): white where the defect is, named like the image "
                                     "or <name>_mask.png", accept_multiple_files=True, key="anomaly_mask_files")
        if st.button("Use these images", key="anomaly_files_ingest", type="primary", disabled=not good):
            label = defect_type.strip() or "defect"
            _use(anomaly_data.ingest_anomaly_files, [(f.name, f.getvalue()) for f in good],
                 [(f.name, f.getvalue(), label) for f in defects or []],
                 [(f.name, f.getvalue(), label) for f in masks or []], name=state.get("anomaly_name") or "upload")
    with folder_tab:
        st.caption("A folder of good images; or good/ beside defect folders; or the MVTec AD layout "
                   "(train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png).")
        folder = st.file_uploader("Choose the folder", accept_multiple_files="directory", key="anomaly_folder")
        if st.button("Use this folder", key="anomaly_folder_ingest", disabled=not folder):
            _use(anomaly_data.ingest_anomaly_tree, [(f.name, f.getvalue()) for f in folder],
                 name=uploads.upload_name(folder, "upload"))
    with zip_tab:
        archive = st.file_uploader("A .zip in any of those layouts", type=["zip"], key="anomaly_zip")
        if st.button("Use this zip", key="anomaly_zip_ingest", disabled=archive is None):
            _use(anomaly_data.ingest_anomaly_zip, archive.getvalue(), name=archive.name)
    with webcam_tab:
        _webcam()
    dataset_dir = state.get("dataset_dir")
    if dataset_dir and Path(dataset_dir).is_dir():
        audit_section(dataset_dir)


def _webcam() -> None:
    shots = state.setdefault("anomaly_webcam_shots", [])
    shot = st.camera_input("Take a picture of a good one", key="anomaly_webcam_shot")
    if shot is not None and st.button("Keep it as good", key="anomaly_webcam_keep"):
        shots.append((f"webcam_{len(shots) + 1:03d}.jpg", shot.getvalue()))
    st.caption(f"{len(shots)} good picture{'s' if len(shots) != 1 else ''} kept"
               f"{'' if len(shots) >= anomaly_data.MIN_GOOD_IMAGES else f' (at least {anomaly_data.MIN_GOOD_IMAGES} needed)'}.")
    if st.button("Make a dataset of them", key="anomaly_webcam_ingest", disabled=not shots):
        _use(anomaly_data.ingest_anomaly_files, list(shots), name="webcam")


def audit_section(dataset_dir: str) -> None:
    """What the dataset holds: good and labelled images, masks, what was refused and why."""
    dataset = load_dataset(dataset_dir)
    samples = anomaly_data.labelled_samples(dataset_dir)
    good = anomaly_data.good_paths(dataset_dir)
    st.subheader("What you gave")
    columns = st.columns(3)
    columns[0].metric("Good images", len(good))
    columns[1].metric("Defect images", sum(s.anomalous for s in samples))
    columns[2].metric("With masks", sum(s.mask is not None for s in samples))
    for note in dataset.notes:
        st.info(literal(note), icon=":material/info:")
    if len(good) < 10:
        st.warning("Fewer than 10 good images: it works, but more good images make fewer false alarms.",
                   icon=":material/warning:")
    if samples:
        per_type = {}
        for sample in samples:
            per_type.setdefault(sample.label, [0, 0])
            per_type[sample.label][0] += 1
            per_type[sample.label][1] += sample.mask is not None
        st.dataframe([{"type": label, "images": n, "with masks": m} for label, (n, m) in per_type.items()],
                     hide_index=True, key="anomaly_types_table")
    problems = dataset.refused + anomaly_data.mask_problems(dataset_dir)
    if problems:
        st.subheader("Files not used")
        st.dataframe(problems, hide_index=True, key="anomaly_refused_table",
                     column_config={"name": st.column_config.TextColumn("File", width="medium"),
                                    "reason": st.column_config.TextColumn("Why", width="large")})
    st.caption("Good images that look far from the others are named after the model is fitted (Train and "
               "Results): a defect may have slipped into the good set.")
    thumbs = [widgets.thumbnail(str(path)) for path in good[:8]]
    st.image([t for t in thumbs if t is not None], width=96)
