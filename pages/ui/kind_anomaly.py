"""The anomaly task kind's parts of the pages: good images in, a memory of normal patches, scores and heat maps out.

Widgets only; tl_core.anomaly does the work and builds the figures. The pages call these sections once the
kind is chosen (the contract: data_section, layers_section, train_section, results_section, predict_section,
export_section). User-supplied names are shown as plain text (literal, st.text, dataframes).

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.ui import gate, uploads, widgets
from pages.ui.text import literal
from tl_core.ops import runs
from tl_core.anomaly import data as anomaly_data
from tl_core.anomaly import plots, results
from tl_core.anomaly.threshold import FALSE_ALARM_RATE, confusion
from tl_core.data.datasets import ImageRefused, load_dataset, open_image

state = st.session_state
GALLERY_COLUMNS = 4
OPTIONS_KEY = "anomaly_options"  # RunConfig.kind_options of the next anomaly run (pages/ui/train_settings.py): stages, bank fraction, false alarms


# ---------------------------------------------------------------- Data page

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
