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

from pages.ui import detect_data
from pages.ui.text import literal
from tl_core import kinds
from tl_core.ops import runs
from tl_core.data.datasets import ImageRefused, open_image
from tl_core.detect import plots

DEFAULT_SCORE = 0.3


data_section = detect_data.data_section  # the Data page's section (pages/ui/kinds.py), in a module of its own


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
