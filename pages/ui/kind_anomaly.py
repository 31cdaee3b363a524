"""The anomaly task kind's parts of the pages: good images in, a memory of normal patches, scores and heat maps out.

Widgets only; tl_core.anomaly does the work and builds the figures. The pages call these sections once the
kind is chosen (the contract: data_section, layers_section, train_section, results_section, predict_section,
export_section). User-supplied names are shown as plain text (literal, st.text, dataframes).

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.ui import anomaly_data, widgets
from pages.ui.text import literal
from tl_core.ops import runs
from tl_core.anomaly import plots, results
from tl_core.anomaly.threshold import FALSE_ALARM_RATE, confusion
from tl_core.data.datasets import ImageRefused, open_image

state = st.session_state
GALLERY_COLUMNS = 4
OPTIONS_KEY = "anomaly_options"  # RunConfig.kind_options of the next run (pages/ui/train_settings.py)

data_section = anomaly_data.data_section  # the Data page's section (pages/ui/kinds.py), in a module of its own


# ---------------------------------------------------------------- Layers page

def layers_section() -> None:
    """Which backbone stages feed the memory bank, its size, and the false-alarm rate of the threshold."""
    from tl_core.anomaly.features import DEFAULT_LAYERS, stages
    from tl_core.anomaly.memory import BANK_FRACTION

    backbone = state.get("backbone", "efficientnet_lite0")
    table = stages(backbone)
    st.write("Patches of the good images are described by mid-level stages of the backbone: fine enough to "
             "place a defect, general enough for any material. Each feature cell covers `stride` pixels.")
    labels = {f"stage {s['index']} · stride {s['stride']} px · {s['channels']} channels": s["index"] for s in table}
    default = [name for name, index in labels.items() if index in DEFAULT_LAYERS] or list(labels)[:2]
    chosen = st.multiselect("Stages feeding the memory bank", list(labels), default=default, key="anomaly_stages")
    fraction = st.slider("Memory bank: share of the good patches kept (greedy coreset)", 1, 25,
                         int(round(BANK_FRACTION * 100)), format="%d %%", key="anomaly_bank_percent",
                         help="At least 1,000 patches are kept (all of them when there are fewer); a larger bank "
                              "is a little more exact and slower to fit and to predict.")
    rate = st.slider("Expected false alarms (threshold from good images alone)", 0.5, 10.0,
                     FALSE_ALARM_RATE * 100, step=0.5, format="%.1f %%", key="anomaly_false_alarm_percent",
                     help="Used when no defect images are given; with defects, the threshold with the best F1.")
    if not chosen:
        st.warning("Choose at least one stage.")
        return
    state[OPTIONS_KEY] = {"anomaly_layers": sorted(labels[name] for name in chosen), "bank_fraction": fraction / 100,
                          "false_alarm_rate": rate / 100}


# ---------------------------------------------------------------- Train page

def train_section(run_dir) -> None:
    """What the fit has found so far: the bank's cost, good images that look like defects, the threshold."""
    events = runs.read_events(Path(run_dir))
    for event in events:
        if event.get("event") == "notice" and event.get("kind") in ("bank", "threshold", "data", "mask"):
            st.caption(literal(event["message"]))
    for event in events:
        if event.get("event") == "notice" and event.get("kind") == "outlier":
            _outlier(run_dir, event["image"], event["message"])


def _outlier(run_dir, name: str, message: str) -> None:
    st.warning(literal(message), icon=":material/warning:")
    root = Path(runs.read_config(Path(run_dir)).dataset_dir)
    thumb = widgets.thumbnail(str(root / name), 160)
    if thumb is not None:
        st.image(thumb, caption=literal(name))


# ---------------------------------------------------------------- Results page

def results_section(run_dir) -> None:
    """Scores good against defect, ROC, a live threshold, the gallery of heat maps (worst first)."""
    summary = results.summary(run_dir)
    metrics, chosen = summary["metrics"], summary["threshold"]
    if not chosen:
        st.info("The run has no results yet.")
        return
    columns = st.columns(4)
    columns[0].metric("Image AUROC", _number(metrics.get("image_auroc")))
    columns[1].metric("Pixel AUROC", _number(metrics.get("pixel_auroc")),
                      help="Needs defect images with masks." if metrics.get("pixel_auroc") is None else None)
    columns[2].metric("Good images", metrics.get("good_images", 0))
    columns[3].metric("Memory bank", f"{metrics.get('bank', {}).get('kept', 0):,} patches")
    st.caption(literal(f"Threshold {chosen['value']:.3f}: {chosen.get('words', '')}"))
    if metrics.get("note"):
        st.caption(literal(metrics["note"]))
    for found in results.outliers(run_dir):
        _outlier(run_dir, found["name"], found["message"])
    scores, labels = summary["scores"], summary["labels"]
    # the range reaches just past the top score, so "nothing flagged" is one of its settings
    low, high = min(scores), max(scores) + 0.01 * (max(scores) - min(scores)) + 1e-3
    threshold = st.slider("Threshold", float(low), float(high),
                          float(min(max(chosen["value"], low), high)), key="anomaly_threshold",
                          help="Move it: the counts, the ROC point and the gallery's marks follow.")
    counts = confusion(scores, labels, threshold)
    cells = st.columns(4)
    cells[0].metric("Defects caught", counts["caught"])
    cells[1].metric("Defects missed", counts["missed"])
    cells[2].metric("False alarms", counts["false_alarms"])
    cells[3].metric("Good passed", counts["passed"])
    left, right = st.columns(2)
    left.plotly_chart(plots.score_histogram(scores, labels, threshold), key="anomaly_histogram")
    right.plotly_chart(plots.roc_figure(scores, labels, threshold), key="anomaly_roc")
    if not any(labels):
        st.info("No defect images were given: the scores are those of the good images, each against the others. "
                "Add a few defect images on the Data page to see how well defects are caught.")
    _gallery(run_dir, threshold)


def _number(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _gallery(run_dir, threshold: float) -> None:
    items = results.gallery(run_dir, threshold)
    if not items:
        return
    st.subheader("Labelled images, worst first")
    columns = st.columns(GALLERY_COLUMNS)
    for i, item in enumerate(items):
        picture = results.heat_overlay(run_dir, item, threshold)
        mark = f" · {item['mark'].upper()}" if item["mark"] else ""
        caption = literal(f"{item['label']} · {item['score']:.2f}{mark} · {Path(item['name']).name}")
        with columns[i % GALLERY_COLUMNS]:
            if picture is not None:
                st.image(picture, caption=caption)
            else:
                st.caption(caption)


# ---------------------------------------------------------------- Predict page

@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _predictor(run_dir: str):
    from tl_core.anomaly.predict import AnomalyPredictor

    return AnomalyPredictor(run_dir)


def predict_section(run_dir) -> None:
    """A picture (upload or webcam) → its score, the verdict at the threshold, and the heat map."""
    upload_tab, webcam_tab = st.tabs([":material/upload: Upload", ":material/photo_camera: Webcam"],
                                     key="anomaly_predict_tab", on_change="rerun")
    with upload_tab:
        upload = st.file_uploader("An image to check", key="anomaly_predict_upload")
    with webcam_tab:
        shot = st.camera_input("Take a picture", key="anomaly_predict_shot")
    source = upload if upload is not None else shot
    if source is None:
        return
    try:
        image = open_image(source.getvalue(), source.name)
    except ImageRefused as refusal:
        st.error(literal(f"{source.name}: {refusal.reason}"))
        return
    answer = _predictor(str(run_dir)).explain(image)
    verdict = st.error if answer["anomalous"] else st.success
    verdict(f"{'Anomalous' if answer['anomalous'] else 'Normal'}: score {answer['score']:.3f}, threshold "
            f"{answer['threshold']:.3f}", icon=":material/report:" if answer["anomalous"] else ":material/check:")
    if answer.get("resized"):
        st.caption(literal(answer["resized"]))
    left, right = st.columns(2)
    left.image(image, caption="The picture")
    right.image(answer["overlay"], caption="Where it differs from the good images (red to yellow)")


# ---------------------------------------------------------------- Export page

def export_section(run_dir) -> None:
    """One ONNX file (features, memory bank, scorer), checked against tl_core, with a program that runs it."""
    st.write("One ONNX graph takes an image and returns its score and heat map; the bundle's "
             "`predict_anomaly.py` prints the score and the verdict and writes the heat map (needs numpy, "
             "pillow and onnxruntime).")
    if st.button("Export to ONNX", key="anomaly_export", type="primary"):
        from tl_core.anomaly.export import export

        try:
            with st.spinner("Exporting and checking with onnxruntime…"):
                state["anomaly_export_report"] = export(run_dir, "onnx")
        except (RuntimeError, ValueError) as error:
            st.error(literal(error))
    report = state.get("anomaly_export_report")
    if report and Path(report["zip"]).is_file():
        st.success(f"Verified on {report['images_checked']} images: scores within {report['max_score_diff']:.1e} "
                   f"of the app's (allowed {report['tolerance']:g}), the same verdict on {report['same_verdicts']}.",
                   icon=":material/verified:")
        st.download_button("Download the bundle (.zip)", Path(report["zip"]).read_bytes(),
                           file_name=Path(report["zip"]).name, key="anomaly_export_download")
