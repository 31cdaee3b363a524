"""The detection kind's Data page: pictures with boxes imported (COCO, YOLO, VOC) or drawn, audited, edited."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import gate
from pages.ui.text import literal
from tl_core import kinds
from tl_core.data.datasets import DatasetError, ImageRefused, open_image
from tl_core.detect import audit, editing, formats, plots
from tl_core.ops.storage import StorageFull

USER_ERRORS = (DatasetError, ValueError, FileNotFoundError, StorageFull, ImageRefused)
EDITABLE = 300  # pictures listed in the box editor: it is for small sets
DEFAULT_SCORE = 0.3


def data_section() -> None:
    """Import a COCO / YOLO / VOC folder or zip, or draw boxes on pictures; the audit; the box editor."""
    st.subheader("Pictures with boxes")
    how = st.radio("Where are the boxes?", ["Import a folder or zip (COCO, YOLO, Pascal VOC)",
                                            "Draw them here (a small set)"], key="detect_data_how")
    if how.startswith("Import"):
        _import_widgets()
    else:
        _new_drawing_widgets()
    if error := st.session_state.pop("detect_data_error", None):
        st.error(literal(error))
    root = st.session_state.get("dataset_dir")
    boxset = _boxset(root) if root else None
    if boxset is None:
        st.info("Give a folder with `images/` and `annotations.json` (COCO), `images/` + `labels/` with "
                "`data.yaml` or `classes.txt` (YOLO), or `.xml` files (Pascal VOC), or a zip of one.")
        return
    _audit_view(boxset)
    _editor(boxset)


def _import_widgets() -> None:
    folder = st.file_uploader("The folder (images/ with annotations.json, the YOLO or the VOC layout)",
                              accept_multiple_files="directory", key="detect_folder_upload")
    archive = st.file_uploader("…or a zip of it", type=["zip"], key="detect_zip")
    if st.button("Import", key="detect_import", type="primary", disabled=not (folder or archive)):
        try:
            if archive is not None:
                import tempfile

                with tempfile.TemporaryDirectory() as scratch:
                    path = Path(scratch) / (Path(archive.name).name or "boxes.zip")
                    path.write_bytes(archive.getvalue())
                    gate.check_room(archive.getvalue())  # a classroom student's disk and dataset limits
                    st.session_state["dataset_dir"] = str(formats.ingest(path, workspace=_mine()))
            else:
                files = [(upload.name, upload.getvalue()) for upload in folder]
                gate.check_room(files)
                st.session_state["dataset_dir"] = str(formats.ingest_files(files, _top_folder(files),
                                                                           workspace=_mine()))
        except USER_ERRORS as error:
            st.session_state["detect_data_error"] = str(error)


def _mine() -> Path:
    """Where this user's datasets go: their own space on a classroom server (tl_core.ops.spaces)."""
    return gate.space().data_workspace


def _top_folder(files: list[tuple[str, bytes]]) -> str:
    tops = {name.replace("\\", "/").split("/")[0] for name, _ in files}
    return tops.pop() if len(tops) == 1 else "upload"


def _new_drawing_widgets() -> None:
    uploads = st.file_uploader("Pictures", type=["jpg", "jpeg", "png", "bmp", "webp"], accept_multiple_files=True,
                               key="detect_draw_uploads")
    classes = st.text_input("Classes of objects, comma-separated", key="detect_draw_classes", value="object")
    if st.button("Start drawing", key="detect_draw_start", disabled=not uploads):
        try:
            pictures = [(u.name, u.getvalue()) for u in uploads]
            gate.check_room(pictures)
            root = editing.new_boxset(pictures, classes.split(","), workspace=_mine())
            st.session_state["dataset_dir"] = str(root)
        except USER_ERRORS as error:
            st.session_state["detect_data_error"] = str(error)


def _boxset(root: str):
    try:
        return formats.load_boxset(root)
    except (DatasetError, ValueError, KeyError, TypeError, OSError):
        return None


def _audit_view(boxset) -> None:
    size = int(st.session_state.get("image_size") or kinds.get("detect").options["default_image_size"])
    report = audit.audit(boxset, image_size=size)
    st.subheader("Audit")
    left, middle, right = st.columns(3)
    left.metric("Pictures", report["images"])
    middle.metric("Boxes", report["boxes"])
    right.metric("Without boxes (background)", report["background_images"])
    for warning in report["warnings"]:
        st.warning(literal(warning))
    for note in report["notes"]:
        st.caption(literal(note))
    one, two = st.columns(2)
    one.plotly_chart(plots.class_counts_figure(report), key="detect_class_counts")
    two.plotly_chart(plots.box_size_figure(report), key="detect_box_sizes")
    problems = [{"problem": kind, "picture": item["file"], "class": item["label"], "box": str(item["box"])}
                for kind, items in report["problems"].items() for item in items]
    if problems:
        st.caption("Boxes to look at (kept in the dataset; training clips or skips them as the warnings say)")
        st.dataframe(pd.DataFrame(problems), hide_index=True, key="detect_problems")
    if report["refused"]:
        st.caption("Files not used, with the reason")
        st.dataframe(pd.DataFrame(report["refused"]), hide_index=True, key="detect_refused")


def _editor(boxset) -> None:
    st.subheader("Draw or correct boxes")
    if len(boxset.images) > EDITABLE:
        st.caption(f"The editor lists the first {EDITABLE} pictures; fix large sets in your annotation tool.")
    files = [image["file"] for image in boxset.images[:EDITABLE]]
    file = st.selectbox("Picture", files, key="detect_edit_file")
    image = next(i for i in boxset.images if i["file"] == file)
    new_class = st.text_input("Add a class", key="detect_new_class", help="a new name to pick in the table")
    classes = list(dict.fromkeys([*boxset.classes, *([new_class.strip()] if new_class.strip() else [])]))
    table = pd.DataFrame([{"label": label, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]}
                          for b, label in zip(image["boxes"], image["labels"])],
                         columns=["label", "x0", "y0", "x1", "y1"])
    picture_col, table_col = st.columns([3, 2])
    with table_col:
        st.caption(f"Boxes in pixels of the {image['width']}×{image['height']} picture; add a row for a new box")
        edited = st.data_editor(table, num_rows="dynamic", key=f"detect_boxes::{boxset.root.name}::{file}",
                                column_config={"label": st.column_config.SelectboxColumn("label", options=classes,
                                                                                         required=True),
                                               **{c: st.column_config.NumberColumn(c, min_value=0.0, step=1.0)
                                                  for c in ("x0", "y0", "x1", "y1")}})
    rows = [r for r in edited.to_dict("records") if r.get("label") and all(pd.notna(r.get(c)) for c in "x0 y0 x1 y1".split())]
    drawn = [{"label": r["label"], "box": [r["x0"], r["y0"], r["x1"], r["y1"]]} for r in rows]
    with picture_col:
        picture = open_image(boxset.path(image))
        st.image(plots.draw_boxes(picture, drawn, classes), caption=None)
    if st.button("Save these boxes", key="detect_save_boxes"):
        try:
            gate.check_room(str(boxset.root))  # the new version is a copy: the student's limits hold for it too
            st.session_state["dataset_dir"] = str(editing.with_boxes(boxset.root, file, drawn, classes,
                                                                     workspace=_mine()))
            st.rerun()
        except USER_ERRORS as error:
            st.error(literal(error))
