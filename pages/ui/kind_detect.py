"""The detect kind's sections of the pages (the pages call kind_<name>.py's functions after the kind choice):
import and audit pictures with boxes, draw or correct boxes, follow training, results, predict and export.
Widgets only: tl_core.detect does the work and draws every figure and picture.

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import gate
from pages.ui.text import literal
from tl_core import kinds
from tl_core.ops import runs
from tl_core.data.datasets import DatasetError, ImageRefused, open_image
from tl_core.detect import audit, editing, formats, plots
from tl_core.ops.storage import StorageFull

USER_ERRORS = (DatasetError, ValueError, FileNotFoundError, StorageFull, ImageRefused)
EDITABLE = 300  # pictures listed in the box editor: it is for small sets
DEFAULT_SCORE = 0.3


# ---------------------------------------------------------------- Data page

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
            st.session_state["dataset_dir"] = str(editing.with_boxes(boxset.root, file, drawn, classes, workspace=_mine()))
            st.rerun()
        except USER_ERRORS as error:
            st.error(literal(error))


# ---------------------------------------------------------------- Train page

def train_section(run_dir) -> None:
    """Under the Train page's own progress, ETA, Stop and curves (drawn live by that page): the detector's loss
    terms (classification, box, centre-ness) and validation mAP@50 per epoch, and its latest notices."""
    events = runs.read_events(Path(run_dir))
    epochs = [e for e in events if e.get("event") == "epoch_end"]
    for notice in [e for e in events if e.get("event") == "notice"][-3:]:
        st.caption(literal(notice.get("message", "")))
    if epochs:
        left, right = st.columns(2)
        left.plotly_chart(plots.loss_figure(epochs), key=f"detect_loss::{run_dir}")
        right.plotly_chart(plots.map_figure(epochs), key=f"detect_map::{run_dir}")


# ---------------------------------------------------------------- Results page

def results_section(run_dir) -> None:
    """mAP@50, mAP@[.5:.95], per-class AP, PR curves, the confusion with background, the gallery worst first."""
    metrics = runs.read_metrics(Path(run_dir))
    if not metrics or metrics.get("task") != "detect":
        st.info("This run has no detection results yet.")
        return
    one, two, three = st.columns(3)
    one.metric("mAP@50", f"{metrics['map50'] or 0:.3f}")
    two.metric("mAP@[.5:.95]", f"{metrics['map'] or 0:.3f}")
    three.metric("Validation pictures", metrics.get("n_val"))
    st.caption(literal(f"Measured on {metrics.get('validation')}, best epoch {metrics.get('best_epoch')}, "
                       f"layers trained: {metrics.get('freeze')}."))
    st.dataframe(pd.DataFrame([{"class": name, "AP@50": row.get("ap50"), "AP@[.5:.95]": row.get("ap"),
                                "objects": row.get("objects")} for name, row in metrics["per_class"].items()]),
                 hide_index=True, key="detect_per_class")
    left, right = st.columns(2)
    left.plotly_chart(plots.per_class_figure(metrics), key="detect_ap_bars")
    right.plotly_chart(plots.pr_figure(metrics), key="detect_pr")
    threshold = st.slider("Score threshold", 0.05, 0.95, DEFAULT_SCORE, 0.05, key="detect_results_score",
                          help="boxes scoring less are not shown and do not count in the confusion")
    st.plotly_chart(plots.confusion_figure(plots.confusion_at(run_dir, threshold)), key="detect_confusion")
    st.caption("The last row counts false alarms (a box where there is no object); the last column missed "
               "objects.")
    st.subheader("Validation pictures, worst first")
    st.caption("White: the true boxes; coloured: the model's, with their scores.")
    shown = plots.gallery(run_dir, threshold)
    columns = st.columns(4)
    for k, item in enumerate(shown):
        columns[k % 4].image(item["image"], caption=f"{item['wrong']} wrong · {Path(item['file']).name}")


# ---------------------------------------------------------------- Predict page

@st.cache_resource(max_entries=2)
def _predictor(run_dir: str):
    return kinds.get("detect").call("predictor", Path(run_dir))


def predict_section(run_dir) -> None:
    """Boxes with labels and scores on an uploaded picture or a webcam shot."""
    upload = st.file_uploader("A picture", type=["jpg", "jpeg", "png", "bmp", "webp"], key="detect_predict_upload")
    shot = st.camera_input("…or the webcam", key="detect_predict_camera") if st.toggle(
        "Use the webcam", key="detect_predict_webcam") else None
    source = upload or shot
    threshold = st.slider("Score threshold", 0.05, 0.95, DEFAULT_SCORE, 0.05, key="detect_predict_score")
    if source is None:
        return
    try:
        picture = open_image(source.getvalue(), source.name)
    except ImageRefused as refusal:
        st.error(literal(refusal))
        return
    predictor = _predictor(str(run_dir))
    answer = predictor.predict(picture, score_threshold=threshold)
    st.image(plots.draw_boxes(picture, answer["boxes"], predictor.classes))
    if answer["boxes"]:
        st.dataframe(pd.DataFrame([{"label": b["label"], "score": b["score"], "x0": b["box"][0], "y0": b["box"][1],
                                    "x1": b["box"][2], "y1": b["box"][3]} for b in answer["boxes"]]),
                     hide_index=True, key="detect_predict_table")
    else:
        st.caption(f"Nothing found at a score of {threshold:.2f} or more.")


# ---------------------------------------------------------------- Export page

def export_section(run_dir) -> None:
    """ONNX with NMS inside, verified with ONNX Runtime on held-out pictures; the bundle to download."""
    st.caption("model.onnx takes one picture and returns boxes, scores and classes, with non-maximum suppression "
               "inside. Before it is kept, ONNX Runtime must find the same boxes as the studio (IoU ≥ 0.99, "
               "scores within 0.001) on the run's held-out pictures. The bundle's predict_example.py draws them.")
    key = f"detect_export::{run_dir}"
    if st.button("Export to ONNX", key="detect_export_button", type="primary"):
        with st.spinner("Exporting and verifying…"):
            started = time.time()
            try:
                st.session_state[key] = kinds.get("detect").call("export", Path(run_dir), "onnx", None)
            except Exception as error:  # an export that does not verify is a message, not a crash
                st.session_state[key] = {"error": str(error)}
            st.session_state[key]["took_s"] = round(time.time() - started, 1)
    report = st.session_state.get(key)
    if not report:
        return
    if "error" in report:
        st.error(literal(report["error"]))
        return
    st.success(f"Verified on {report['images']} held-out pictures: {report['boxes_checked']} boxes, lowest IoU "
               f"{report['min_iou']:.4f}, largest score difference {report['max_score_diff']:.1e}.")
    st.download_button("Download the bundle (zip)", Path(report["zip"]).read_bytes(), file_name=Path(report["zip"]).name,
                       key="detect_export_download")
