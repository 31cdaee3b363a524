"""Where the model will be used: the target images (Data page), the choice of adaptation (Train page) and
target accuracy beside source validation (Results page). Widgets only; tl_core.adapt does the work.

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.ui import gate, uploads, widgets
from pages.ui.text import literal
from tl_core.config import ADAPT_HELP, ADAPT_METHODS
from tl_core.data.datasets import load_dataset
from tl_core.data.datasets.unlabelled import ingest_unlabelled_files, ingest_unlabelled_zip

TYPICAL_WIDTH = 72


def _use(dataset, key: str) -> None:
    if dataset is not None:
        st.session_state[key] = str(dataset.root)
        st.session_state.pop("shift_report", None)
        st.rerun()


def _ingest(action, *args, **kwargs):
    try:
        gate.check_room(*args)  # a classroom student's disk and dataset limits
        return action(*args, workspace=gate.space().data_workspace, **kwargs)  # in the user's own space
    except widgets.USER_ERRORS as error:
        widgets.show_error(error)
        return None


def data_section() -> None:
    """The Data page's "Where will you use the model?": unlabelled target images, a labelled target set, the
    shift meter."""
    state = st.session_state
    st.header("Where will you use the model?")
    st.write("If the model will see images of another kind than these (another camera, site, season or "
             "production line), give some of them here: no labels needed. The studio measures how different "
             "they look and can adapt the model to them.")
    folder_tab, zip_tab, test_tab = st.tabs(["Target images (a folder, any layout)", "Target images (a zip)",
                                             "Labelled target images, to measure"],
                                            key="target_source_tab", on_change="rerun")  # kept across reruns
    with folder_tab:
        target_files = st.file_uploader("Images from where the model will be used", accept_multiple_files=True,
                                   key="target_upload")
        if st.button("Use these target images", key="target_ingest", disabled=not target_files):
            _use(_ingest(ingest_unlabelled_files, [(u.name, u.getvalue()) for u in target_files]), "target_dir")
    with zip_tab:
        archive = st.file_uploader("A .zip of target images, any layout", type=["zip"], key="target_zip_upload")
        if st.button("Use this zip", key="target_zip_ingest", disabled=archive is None):
            _use(_ingest(ingest_unlabelled_zip, archive.getvalue(), name=Path(archive.name).stem), "target_dir")
    with test_tab:
        st.caption("Optional: target images sorted into the same class folders. They are never trained on; "
                   "Results shows the accuracy on them beside the validation accuracy.")
        uploads.upload_tabs("target_test", "target_test_dir")
    target = _dataset("target_dir")
    if target is None:
        st.caption("No target images: the model is trained and measured on these images only.")
        return
    test = _dataset("target_test_dir")
    st.success(f"Target images: {literal(target.name)} ({len(target.items)} images"
               + (f"; {len(test.items)} labelled to measure)" if test else ")"), icon=":material/check:")
    if target.refused:
        st.dataframe(target.refused, hide_index=True, key="target_refused",
                     column_config={"name": "file", "reason": "why it was refused"})
    if st.button("Measure the shift", key="measure_shift", icon=":material/straighten:"):
        from tl_core.adapt import measure_shift

        with st.spinner("Comparing the two sets through the backbone…"):
            try:
                state.shift_report = measure_shift(state.dataset_dir, state.target_dir, state.backbone, state.weights)
            except widgets.USER_ERRORS as error:
                widgets.show_error(error)
    if report := state.get("shift_report"):
        shift_report(report)
    st.button("Forget the target images", key="target_clear", on_click=_clear)


def shift_report(report: dict) -> None:
    """The shift meter in words, with the most typical images of each side and the least overlapping classes."""
    st.metric("Proxy A-distance", f"{report['pad']:.2f}",
              help="0: a classifier cannot tell the two sets apart; 2: it tells them apart every time "
                   f"(here it was right {report['domain_acc']:.0%} of the time on images it did not fit).")
    st.info(literal(report["words"].capitalize()), icon=":material/straighten:")
    source_col, target_col = st.columns(2)
    source_col.caption("Most typical of your images")
    source_col.image([p for p in map(widgets.thumbnail, report["typical_source"]) if p is not None],
                     width=TYPICAL_WIDTH)
    target_col.caption("Most typical of the target images")
    target_col.image([p for p in map(widgets.thumbnail, report["typical_target"]) if p is not None],
                     width=TYPICAL_WIDTH)
    if report.get("least_overlap"):
        st.caption("Classes that overlap least with the target (share of their images told apart from it):")
        st.dataframe(report["least_overlap"], hide_index=True, key="least_overlap",
                     column_config={"class": st.column_config.TextColumn("Class"),
                                    "told_apart": st.column_config.NumberColumn("Told apart", format="percent")})


def _clear() -> None:
    for key in ("target_dir", "target_test_dir", "shift_report"):
        st.session_state[key] = None


def _dataset(key: str):
    root = st.session_state.get(key)
    if not root:
        return None
    try:
        return load_dataset(root)
    except widgets.USER_ERRORS:
        st.session_state[key] = None
        return None


def adapt_choice() -> None:
    """The Train page's choice of adaptation, one sentence each; only with target images."""
    if not st.session_state.get("target_dir"):
        st.session_state.adapt = "none"
        return
    st.radio("Adapt to the target images", list(ADAPT_METHODS), key="adapt", horizontal=True,
             captions=[ADAPT_HELP[m] for m in ADAPT_METHODS],
             help="The target images of the Data page; DANN needs layers that train (Layers page).")


def results_section(metrics: dict) -> None:
    """Source validation and target accuracy side by side, or, without target labels, confidence and entropy."""
    target = metrics.get("target")
    if not target:
        return
    st.subheader("On the target images")
    source_only, adapted = target.get("source_only") or {}, target.get("adapted") or {}
    method = target.get("method", "none")
    cols = st.columns(3)
    cols[0].metric("Validation accuracy (your images)", f"{metrics.get('val_acc', 0):.1%}")
    if "target_acc" in (adapted or source_only):
        if "target_acc" in source_only:
            cols[1].metric("Target accuracy, not adapted", f"{source_only['target_acc']:.1%}")
        if "target_acc" in adapted and method != "none":
            delta = (f"{adapted['target_acc'] - source_only['target_acc']:+.1%}" if "target_acc" in source_only
                     else None)
            cols[2].metric(f"Target accuracy, {method}", f"{adapted['target_acc']:.1%}", delta=delta)
    else:
        st.caption("No labelled target images, so target accuracy cannot be measured: below, how sure the model "
                   "is on the target images (higher confidence and lower entropy usually, not always, mean better).")
        for col, (name, record) in zip(cols[1:], (("not adapted", source_only), (method, adapted))):
            if record:
                col.metric(f"Confidence on target, {name}", f"{record['confidence']:.1%}",
                           help=f"mean entropy {record['entropy']:.2f}")
    shift = target.get("shift", {})
    if shift:
        st.caption(literal(f"Shift meter: {shift.get('words', '')} (proxy A-distance {shift.get('pad', 0):.2f})."))
    if target.get("not_applied"):
        st.caption(literal(f"{method}: {target['not_applied']}."))
