"""Step 2: bring the labelled images (one folder per class), check them, and choose how to validate."""
from pathlib import Path

import streamlit as st

from pages.ui import common, gate, multitask_data, target_domain
from tl_core.data import datasets
from tl_core import plots
from tl_core.data.sample_data import SAMPLE_DIR

SAMPLE_NAME = "Fashion sample"
THUMBNAILS_PER_CLASS = 8
state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("2 · Your images")
st.write("Give a few dozen images per class, one folder per class (`cats/`, `dogs/`…). "
         "Every file is checked; files that cannot be used are listed with the reason.")
if flash := state.pop("data_flash", None):
    st.success(flash, icon=":material/check:")


def ingest(action, *args, **kwargs) -> datasets.Dataset | None:
    """Run one tl_core ingest with a progress bar; a user error becomes a message."""
    bar = st.progress(0.0, text="Checking images…")
    try:
        kwargs.setdefault("workspace", gate.space().data_workspace)  # the user's own datasets folder
        dataset = action(*args, progress=common.progress_callback(bar), **kwargs)
    except common.USER_ERRORS as error:
        common.show_error(error)
        return None
    finally:
        bar.empty()
    return dataset


def use_dataset(dataset: datasets.Dataset | None, key: str = "dataset_dir") -> None:
    """Make `dataset` the training (or validation) set and redraw the page with its audit."""
    if dataset is not None:
        state[key] = str(dataset.root)
        role = "validation set" if key == "val_dataset_dir" else "dataset"
        state.data_flash = f"Now using the {role} {common.literal(common.dataset_label(dataset))}."
        st.rerun()


def ingest_copy(dataset: datasets.Dataset, **leave_out) -> datasets.Dataset | None:
    """A copy of `dataset` without some of its images (datasets.without); a user error becomes a message."""
    try:
        return datasets.without(dataset, workspace=gate.space().data_workspace, **leave_out)
    except common.USER_ERRORS as error:
        common.show_error(error)
        return None


def sample_dataset() -> datasets.Dataset | None:
    """The bundled sample, ingested once per workspace."""
    for dataset in datasets.list_datasets(gate.space().data_workspace):
        if dataset.source.get("path") == str(SAMPLE_DIR.resolve()) and dataset.name == SAMPLE_NAME:
            return dataset
    return ingest(datasets.ingest_folder, SAMPLE_DIR, name=SAMPLE_NAME)


def upload_tabs(prefix: str, key: str) -> None:
    """Folder and zip uploads that make a dataset and store its folder under `key`."""
    folder_tab, zip_tab = st.tabs(["A folder of class folders", "A zip file"], key=f"{prefix}_upload_tab",
                                  on_change="rerun")  # keyed: a button's rerun keeps the tab the user is on
    with folder_tab:
        uploads = st.file_uploader("Choose the folder that holds one folder per class",
                                   accept_multiple_files="directory", key=f"{prefix}_folder_upload")
        if st.button("Use these images", key=f"{prefix}_folder_ingest", disabled=not uploads):
            files = common.files_from_folder_upload(uploads)
            use_dataset(ingest(datasets.ingest_files, files, name=common.upload_name(uploads, "")), key)
    with zip_tab:
        archive = st.file_uploader("A .zip with one folder per class", type=["zip"], key=f"{prefix}_zip_upload")
        if st.button("Use this zip", key=f"{prefix}_zip_ingest", disabled=archive is None):
            use_dataset(ingest(datasets.ingest_zip, archive.getvalue(), name=Path(archive.name).stem), key)


# ---------------------------------------------------------------- bring images
if st.button("Try the sample dataset", key="use_sample", type="primary", icon=":material/auto_awesome:",
             help="300 Fashion-MNIST pictures of clothes, 10 classes: everything works offline."):
    use_dataset(sample_dataset())

st.subheader("Or bring your own")
# Keyed tabs track which one is open: without a key, a button's rerun showed the first tab again.
folder_zip_tab, per_class_tab, webcam_tab, earlier_tab = st.tabs(
    [":material/folder_zip: Folder or zip", ":material/category: Images per class", ":material/photo_camera: Webcam",
     ":material/history: Earlier datasets"], key="data_source_tab", on_change="rerun")
with folder_zip_tab:
    upload_tabs("train", "dataset_dir")

with per_class_tab:
    st.caption("Name each class and drop its images.")
    st.text_input("Dataset name", key="per_class_name", placeholder="e.g. my pets",
                  help="To find it again among your datasets; left empty, it is named by the date.")
    for class_id in state.manual_class_ids:
        name_col, files_col = st.columns([1, 3])
        class_name = name_col.text_input("Class name", key=f"class_name_{class_id}", placeholder="e.g. cats")
        files_col.file_uploader(f"Images of {common.literal(class_name) if class_name else 'this class'}",
                                accept_multiple_files=True,
                                key=f"class_files_{class_id}")
    add_col, create_col = st.columns([1, 3])
    add_col.button("Add a class", key="add_class", icon=":material/add:",
                   on_click=lambda: state.manual_class_ids.append(max(state.manual_class_ids, default=-1) + 1))
    if create_col.button("Create the dataset", key="create_per_class", type="primary"):
        files = [(upload.name, upload.getvalue(), state.get(f"class_name_{class_id}", "").strip())
                 for class_id in state.manual_class_ids for upload in state.get(f"class_files_{class_id}") or []]
        if not files:
            st.warning("Drop some images first.")
        else:
            use_dataset(ingest(datasets.ingest_files, files, name=state.get("per_class_name", "").strip() or None))

with webcam_tab:
    st.caption("Take pictures with your camera, class by class, then make a dataset of them.")
    webcam_class = st.text_input("Class of the next pictures", key="webcam_class", placeholder="e.g. thumbs up")
    shot = st.camera_input("Take a picture", key="webcam_shot")
    live = common.live_guess(shot)  # what the pictures kept so far make of this one, at once
    if live and live["guess"]:
        best = live["guess"][0]
        kept = len(state.webcam_shots)
        st.info(common.literal(f"Live guess from the {kept} picture{'s' if kept != 1 else ''} kept so far: "
                               f"{best['label']} ({best['prob']:.0%})"), icon=":material/bolt:")
    if shot is not None and st.button(f"Keep this picture as '{common.literal(webcam_class) or '?'}'",
                                      key="webcam_keep",
                                      disabled=not webcam_class.strip()):
        state.webcam_shots.append((f"webcam_{len(state.webcam_shots) + 1:03d}.jpg", shot.getvalue(),
                                   webcam_class.strip()))
        common.live_keep(live, webcam_class.strip())
    if state.webcam_shots:
        per_class: dict[str, int] = {}
        for _, _, label in state.webcam_shots:
            per_class[label] = per_class.get(label, 0) + 1
        st.markdown("Kept so far: " + ", ".join(f"**{common.literal(label)}** {n}" for label, n in per_class.items()))
        make_col, clear_col = st.columns(2)
        if make_col.button(f"Create a dataset of {len(state.webcam_shots)} pictures", key="webcam_create",
                           type="primary"):
            dataset = ingest(datasets.ingest_files, state.webcam_shots, name="webcam pictures")
            if dataset is not None:
                state.webcam_shots = []
                use_dataset(dataset)
        clear_col.button("Discard the pictures", key="webcam_clear", on_click=common.live_discard)

with earlier_tab:
    earlier = {str(d.root): d for d in datasets.list_datasets(gate.space().data_workspace)}
    if not earlier:
        st.caption("No datasets yet.")
    else:
        chosen_root = st.selectbox("Datasets you added before", list(earlier), key="earlier_dataset",
                                   format_func=lambda root: f"{common.dataset_label(earlier[root])} · "
                                                            f"{earlier[root].created}")
        use_col, delete_col = st.columns(2)
        if use_col.button("Use this dataset", key="use_earlier"):
            use_dataset(earlier[chosen_root])
        if delete_col.button("Delete this dataset", key="delete_earlier", icon=":material/delete:"):
            try:  # only one's own: tl_core.ops.spaces refuses anyone else's, and one a live run needs
                gate.space().delete_dataset(chosen_root)
            except common.USER_ERRORS + (OSError,) as error:
                common.show_error(error)
            else:
                for key in ("dataset_dir", "val_dataset_dir"):
                    if state[key] == chosen_root:
                        state[key] = None
                st.rerun()

multitask_data.upload_section(ingest, use_dataset)

# ---------------------------------------------------------------- the audit
dataset = common.active_dataset()
if dataset is None:
    st.info("No dataset chosen yet: try the sample, or bring your own images above.")
    st.stop()

val_dataset = common.active_dataset("val_dataset_dir") if state.val_source == "separate" else None
report = datasets.audit(dataset, val_dataset)
st.header(f"Check: {common.literal(dataset.name)}")
if dataset.tasks:  # a labels table: the audit is per task
    multitask_data.audit_section(dataset)
else:
    total_col, classes_col, balance_col, refused_col = st.columns(4)
    total_col.metric("Images", report["total"])
    classes_col.metric("Classes", len(report["classes"]))
    balance_col.metric("Largest ÷ smallest class", f"{report['imbalance_ratio']:.1f}×")
    refused_col.metric("Files refused", len(report["refused"]))
    st.plotly_chart(plots.counts_figure(report["counts"]), key="counts_chart")
    for warning in report["warnings"]:
        st.warning(common.literal(warning), icon=":material/warning:")
    if report["single_image_classes"] or report["from_subfolders"]:
        st.caption("You may go on with these images as they are, or make a copy of the dataset without them:")
        drop_col, flat_col = st.columns(2)
        if single := report["single_image_classes"]:
            if drop_col.button(f"Drop {len(single)} class{'es' if len(single) > 1 else ''} with a single image",
                               key="drop_single_classes", icon=":material/delete_sweep:"):
                use_dataset(ingest_copy(dataset, classes=single))
        if nested := report["from_subfolders"]:
            if flat_col.button(f"Leave out the {len(nested)} image{'s' if len(nested) > 1 else ''} from sub-folders",
                               key="drop_subfolder_images", icon=":material/folder_off:"):
                use_dataset(ingest_copy(dataset, from_subfolders=True))
    if report["refused"]:
        st.subheader("Refused files")
        st.dataframe(report["refused"], hide_index=True, key="refused_table",
                     column_config={"name": st.column_config.TextColumn("File", width="medium"),
                                    "reason": st.column_config.TextColumn("Why it was refused", width="large")})

    with st.expander("A few images of each class", expanded=True, icon=":material/grid_view:"):
        for label in dataset.classes:
            paths = [str(dataset.root / item["path"]) for item in dataset.items if item["label"] == label]
            images = [image for image in map(common.thumbnail, paths[:THUMBNAILS_PER_CLASS]) if image is not None]
            label_col, images_col = st.columns([1, 6])
            label_col.markdown(f"**{common.literal(label)}**  \n{len(paths)} images")
            if images:
                images_col.image(images, width=72)

# ---------------------------------------------------------------- validation
st.header("Validation")
st.write("Accuracy is measured on images the model never trains on.")
st.radio("Validation images", ["split", "separate"], key="val_source", horizontal=True,
         format_func={"split": "Hold out part of these images", "separate": "A separate validation set"}.get)
if state.val_source == "split":
    st.slider("Share of each class held out for validation", 0.05, 0.5, step=0.05, key="val_fraction",
              format="%.2f")
    n_val = sum(max(1, round(n * state.val_fraction)) for n in report["counts"].values())
    st.caption(f"About {report['total'] - n_val} images train and {n_val} validate (split per class, seeded).")
else:
    if val_dataset is not None:
        st.success(f"Validation set: {common.literal(common.dataset_label(val_dataset))}.", icon=":material/check:")
    else:
        st.info("Upload the validation images: the same class folders, different pictures.")
    upload_tabs("val", "val_dataset_dir")

target_domain.data_section(upload_tabs)

st.divider()
st.page_link(common.LAYERS_PAGE, label="Next: choose which layers train", icon=":material/arrow_forward:")
