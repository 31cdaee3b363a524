"""The Data page's check of a classifier's images (counts, balance, refused files, a few of each class) and the
choice of how to validate."""
from __future__ import annotations

import streamlit as st

from tl_core import plots
from tl_core.data import datasets
from tl_core.ops.words import plural

from pages.ui import cached, image_quality, labels, multitask_data, uploads, widgets
from pages.ui.text import literal

THUMBNAILS_PER_CLASS = 8


def audit_section(dataset: datasets.Dataset, report: dict) -> None:
    """The audit of `dataset` (a labels table's per task), with the copies that leave out what it warns of."""
    st.header(f"Check: {literal(dataset.name)}")
    if dataset.tasks:  # a labels table: the audit is per task
        multitask_data.audit_section(dataset)
        return
    total_col, classes_col, balance_col, refused_col = st.columns(4)
    total_col.metric("Images", report["total"])
    classes_col.metric("Classes", len(report["classes"]))
    balance_col.metric("Largest ÷ smallest class", f"{report['imbalance_ratio']:.1f}×")
    refused_col.metric("Files refused", len(report["refused"]))
    st.plotly_chart(cached.figure(dataset.root, lambda: plots.counts_figure(report["counts"]), "counts"), key="counts_chart")
    for warning in report["warnings"]:
        st.warning(literal(warning), icon=":material/warning:")
    image_quality.section(dataset)
    if report["single_image_classes"] or report["from_subfolders"]:
        _leave_out(dataset, report)
    if report["refused"]:
        st.subheader("Refused files")
        st.dataframe(report["refused"], hide_index=True, key="refused_table",
                     column_config={"name": st.column_config.TextColumn("File", width="medium"),
                                    "reason": st.column_config.TextColumn("Why it was refused", width="large")})
    with st.expander("A few images of each class", expanded=True, icon=":material/grid_view:"):
        for label in dataset.classes:
            items = [item for item in dataset.items if item["label"] == label]
            shown = items[:THUMBNAILS_PER_CLASS]
            strip = cached.thumbnail_strip([dataset.root / item["path"] for item in shown], 72,
                                           hashes=[item.get("sha256") for item in shown])
            # One element a class, its name in the caption (a label column beside it took four elements a class,
            # a tenth of the page's server time at every rerun).
            if strip is not None:
                st.image(strip, output_format="PNG", caption=literal(f"{label}: {plural(len(items), 'image')}"))
            else:
                st.caption(literal(f"{label}: {plural(len(items), 'image')}, none readable now"))


def _leave_out(dataset: datasets.Dataset, report: dict) -> None:
    st.caption("You may go on with these images as they are, or make a copy of the dataset without them:")
    drop_col, flat_col = st.columns(2)
    if single := report["single_image_classes"]:
        if drop_col.button(f"Drop {len(single)} class{'es' if len(single) > 1 else ''} with a single image",
                           key="drop_single_classes", icon=":material/delete_sweep:"):
            uploads.use_dataset(uploads.ingest_copy(dataset, classes=single))
    if nested := report["from_subfolders"]:
        if flat_col.button(f"Leave out the {len(nested)} image{'s' if len(nested) > 1 else ''} from sub-folders",
                           key="drop_subfolder_images", icon=":material/folder_off:"):
            uploads.use_dataset(uploads.ingest_copy(dataset, from_subfolders=True))


def validation_section(report: dict, val_dataset: datasets.Dataset | None) -> None:
    """Hold out part of the images, or a separate validation set."""
    state = st.session_state
    st.header("Validation")
    st.write("Accuracy is measured on images the model never trains on.")
    st.radio("Validation images", ["split", "separate"], key="val_source", horizontal=True,
             format_func={"split": "Hold out part of these images", "separate": "A separate validation set"}.get)
    if state.val_source == "split":
        st.slider("Share of each class held out for validation", 0.05, 0.5, step=0.05, key="val_fraction",
                  format="%.2f")
        n_val = sum(datasets.held_out_count(n, state.val_fraction) for n in report["counts"].values())
        st.caption(f"{plural(report['total'] - n_val, 'image')} train and {n_val} validate "
                   "(split per class, seeded).")
        if state.freeze in ("head", "auto") and state.augment == "none":  # the run's rule (run_data)
            st.info("When only the head learns (the Layers page's feature extraction, or Auto keeping it), the "
                    "run validates by 5-fold cross-validation instead of this hold-out: every image is scored "
                    "by a head fitted without it. Fine-tuning uses this hold-out.", icon=":material/rule:")
    else:
        if val_dataset is not None:
            st.success(f"Validation set: {literal(labels.dataset_label(val_dataset))}.", icon=":material/check:")
        else:
            st.info("Upload the validation images: the same class folders, different pictures.")
        uploads.upload_tabs("val", "val_dataset_dir")
