"""What every page of the studio shares: session state, the job manager, cached models, links, upload helpers.

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from tl_core.plan import auto_plan
from tl_core.models import backbones, devices
from tl_core.ops import executors, runs, spaces, words
from tl_core import plots
from tl_core.fit import prototypes
from tl_core.config import ConfigError, defaults, recommended_lr
from tl_core.data.datasets import Dataset, DatasetError, ImageRefused, load_dataset, open_image
from tl_core.use.explain import explain_image
from tl_core.use.predict import Predictor
from tl_core.ops.storage import StorageFull, workspace_root

from pages.ui import gate
from pages.ui.text import code, literal  # noqa: F401  (pages call common.literal and common.code)

BACKBONE_PAGE = "pages/1_Backbone.py"
DATA_PAGE = "pages/2_Data.py"
LAYERS_PAGE = "pages/3_Layers.py"
TRAIN_PAGE = "pages/4_Train.py"
RESULTS_PAGE = "pages/5_Results.py"
PREDICT_PAGE = "pages/6_Predict.py"
EXPORT_PAGE = "pages/7_Export.py"
RUNS_PAGE = "pages/8_Runs.py"
CLASS_PAGE = "pages/9_Class.py"

# Errors a user can cause, or a full disk; pages show their message, never a traceback.
USER_ERRORS = (DatasetError, ConfigError, backbones.WeightsUnavailable, ValueError, FileNotFoundError, StorageFull)
ACTIVE_STATES = ("queued", "running")
EXPLAIN_DRAFT = 512  # heat maps and predictions decode big photos at about this size: memory stays small

RUN_DEFAULTS = defaults()  # RunConfig's own: the CLI and the app start from the same settings

# The choices that make a run, kept across pages. Widgets bound to these keys would lose their value
# when the user leaves their page (Streamlit cleans up widget state), so keep_state() re-assigns them.
DEFAULTS = {
    "backbone": backbones.EMBEDDED_MODEL,
    "weights": "embedded",
    "dataset_dir": None,
    "val_dataset_dir": None,
    "target_dir": None,  # unlabelled images of where the model will be used (pages/ui/target_domain.py)
    "target_test_dir": None,
    "adapt": RUN_DEFAULTS["adapt"],
    "val_source": "split",
    "val_fraction": RUN_DEFAULTS["val_fraction"],
    "freeze": RUN_DEFAULTS["freeze"],
    "freeze_preset": RUN_DEFAULTS["freeze"] if RUN_DEFAULTS["freeze"] in ("auto", "head", "all") else "custom",
    "auto_budget": RUN_DEFAULTS["auto_budget"],
    "freeze_top_n": 1,
    "bn_policy": RUN_DEFAULTS["bn_policy"],
    "features": RUN_DEFAULTS["features"],
    "bn_keep_eval": True,
    "epochs": RUN_DEFAULTS["epochs"],
    "lr": recommended_lr(RUN_DEFAULTS["freeze"]),
    "lr_plan": RUN_DEFAULTS["freeze"],  # the freeze plan the learning rate was set for
    "batch_size": RUN_DEFAULTS["batch_size"],
    "image_size": None,  # set from the backbone on first use
    "image_size_backbone": None,  # the backbone image_size was set for
    "augment": RUN_DEFAULTS["augment"],
    "class_weights": RUN_DEFAULTS["class_weights"],
    "early_stopping": RUN_DEFAULTS["early_stopping"],
    "run_name": "",
    "run_dir": None,
    "webcam_shots": [],
    "manual_class_ids": [0, 1],
}
# The choices a reload restores (the user's state file): everything above but the pictures in hand.
SAVED_KEYS = [key for key in DEFAULTS if key not in ("webcam_shots", "manual_class_ids")]





def restore_session() -> None:
    """Once per browser session: the choices this user made before a reload or a reconnect, still theirs."""
    if st.session_state.get("session_restored"):
        return
    saved = gate.space().check_restored({key: value for key, value in gate.space().load_state().items() if key in SAVED_KEYS})
    for key, value in saved.items():
        st.session_state[key] = value
    st.session_state.session_restored = True
    st.session_state.saved_choices = saved


def remember_session() -> None:
    """Write this user's choices to their state file when they changed (after every run of a page)."""
    state = st.session_state
    if not state.get("session_restored"):
        return
    choices = {key: state.get(key) for key in SAVED_KEYS}
    if choices != state.get("saved_choices"):
        try:
            gate.space().save_state(choices)
        except OSError:  # a full disk: the choices stay in this session; nothing else is lost
            return
        state.saved_choices = choices


def my_runs() -> list[str]:
    """This user's own runs, newest first (every run on a laptop)."""
    return [str(run_dir) for run_dir in gate.space().my_runs()]


def visible_runs() -> list[str]:
    """The runs this user may look at: their own; everyone's for the teacher."""
    return [str(run_dir) for run_dir in gate.space().visible_runs()]


def init_state() -> None:
    """Give every shared key its default once, and keep widget-bound keys alive across pages."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = list(value) if isinstance(value, list) else value
        else:
            st.session_state[key] = st.session_state[key]  # stops Streamlit's widget clean-up


@st.cache_resource(show_spinner=False)
def _job_manager_for(workspace: str) -> executors.Executor:
    return executors.make_executor(Path(workspace))  # the local worker queue, or Ray with TL_STUDIO_RAY_ADDRESS


def job_manager() -> spaces.UserQueue:
    """The server's one job manager (per workspace), as this user sees it: their runs carry their name."""
    return spaces.UserQueue(_job_manager_for(str(workspace_root())), gate.space())


@st.cache_resource(show_spinner=False)
def device_name() -> str:
    """Where training runs: the GPU's name, or the CPU."""
    return devices.describe()


@st.cache_resource(show_spinner="Building the model…", max_entries=4)
def structure_model(backbone: str, num_classes: int = 2):
    """The backbone with random weights and a head for `num_classes`: enough for layer groups, sizes and
    timing, which weights do not change (the head's size does: give the dataset's class count)."""
    return backbones.create_model(backbone, num_classes=max(int(num_classes), 2), weights="none")


def backbone_input_size(backbone: str) -> tuple[int, bool]:
    """(the image size the backbone's weights expect, whether it takes only that size)."""
    model = structure_model(backbone)
    size = backbones.data_config(model)["input_size"][-1]
    return size, bool((getattr(model, "pretrained_cfg", {}) or {}).get("fixed_input_size", False))


def live_guess(shot) -> dict | None:
    """The live loop of the webcam tab: this picture's features (computed once per picture) and the guess of
    prototypes of the pictures kept so far (tl_core.fit.prototypes.LiveClassifier, one per session)."""
    state = st.session_state
    if shot is None:
        return None
    if state.get("live_shot", {}).get("id") != shot.file_id:
        if "live" not in state:
            with st.spinner("Loading the backbone for live guesses…"):
                state.live = prototypes.LiveClassifier()
        try:
            image = open_image(shot.getvalue(), name="webcam picture")
        except ImageRefused:
            return None
        features = state.live.features(image)
        state.live_shot = {"id": shot.file_id, "image": image, "features": features,
                           "guess": state.live.predict(image, features)}
    return state.live_shot


def live_keep(live: dict | None, label: str) -> None:
    """The kept picture joins the live prototypes at once (its features are already computed)."""
    if live is not None and "live" in st.session_state:
        st.session_state.live.add(live["image"], label, live["features"])
        live["guess"] = st.session_state.live.predict(live["image"], live["features"])


def live_discard() -> None:
    st.session_state.webcam_shots.clear()
    for key in ("live", "live_shot"):
        st.session_state.pop(key, None)


def plan_measurement() -> dict | None:
    """The newest Auto plan measurement for the session's dataset and backbone (auto_plan.latest_measurement)."""
    state = st.session_state
    if not state.dataset_dir:
        return None
    return auto_plan.latest_measurement(state.dataset_dir, state.backbone)


def sync_lr() -> None:
    """Reset the learning rate to the plan's own when the freeze plan changed; a user's choice stays otherwise."""
    state = st.session_state
    if state.lr_plan != state.freeze:
        state.lr = recommended_lr(state.freeze)
        state.lr_plan = state.freeze


def sync_image_size() -> None:
    """Reset the image size to the backbone's own when the backbone changed."""
    state = st.session_state
    if state.image_size is None or state.image_size_backbone != state.backbone:
        state.image_size = backbone_input_size(state.backbone)[0]
        state.image_size_backbone = state.backbone


def active_dataset(key: str = "dataset_dir") -> Dataset | None:
    """The dataset chosen in session state, or None (also when its folder is gone)."""
    root = st.session_state.get(key)
    if not root:
        return None
    if not gate.space().owns_dataset(root):
        st.session_state[key] = None
        return None
    try:
        return load_dataset(root)
    except DatasetError:
        st.session_state[key] = None
        return None


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(path: str, size: int = 96):
    """A small RGB copy of an image file for galleries; None when it cannot be read."""
    try:
        image = open_image(path, draft_size=2 * size)
        image.thumbnail((size, size))
    except (ImageRefused, OSError, ValueError):
        return None
    return image


def dataset_label(dataset: Dataset) -> str:
    if dataset.tasks:  # a labels table
        return f"{dataset.name} ({len(dataset.items)} images, {len(dataset.tasks)} tasks)"
    return f"{dataset.name} ({len(dataset.items)} images, {len(dataset.classes)} classes)"


def weights_label(weights: str) -> str:
    """Plain text: where weights come from; an uploaded file by its name and the start of its content hash."""
    if weights in ("embedded", "hub", "none"):
        return {"embedded": "embedded (offline)", "hub": "from the hub", "none": "random (from scratch)"}[weights]
    digest = backbones.uploaded_weights_digest(weights)
    return f"file {Path(weights).name}" + (f" (sha256 {digest[:8]}…)" if digest else "")


def run_label(run_dir) -> str:
    """Plain text (wrap it in literal() inside markdown): name, id, state and accuracy of a run."""
    row = words.summarize(Path(run_dir))
    accuracy = f", {row['val_acc']:.1%}" if row.get("val_acc") is not None else ""
    name = f"{row['name']} · " if row.get("name") else ""
    owner = runs.read_owner(Path(run_dir)) if gate.space().teacher else None
    return f"{owner + ': ' if owner else ''}{name}{row['run_id']} ({row['state']}{accuracy})"


def newest_active_run() -> Path | None:
    """This user's newest run still queued or running, so a reload or a second tab finds it again."""
    for run_dir in gate.space().my_runs():
        if runs.read_status(run_dir).get("state") in ACTIVE_STATES:
            return run_dir
    return None


def finished_runs() -> list[str]:
    """Runs that finished with a model to use, newest first."""
    return [str(run_dir) for run_dir in gate.space().visible_runs()
            if runs.read_status(run_dir).get("state") == "done" and runs.RunFolder(run_dir).weights.exists()]


def pick_finished_run(key: str, label: str = "Model (a finished run)") -> Path:
    """A select box of the finished runs, the session's run first chosen; stops the page when there is none."""
    finished = finished_runs()
    if not finished:
        need_first("No finished run yet: train a model first.", TRAIN_PAGE, "4 · Train")
    if st.session_state.get(key) not in finished:
        st.session_state[key] = st.session_state.run_dir if st.session_state.run_dir in finished else finished[0]
    st.selectbox(label, finished, key=key, format_func=run_label)
    show_run(st.session_state[key])
    return Path(st.session_state[key])


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def predictor(run_dir: str) -> Predictor:
    """A finished run's model, loaded once per server and shared by the sessions (a run never changes once done)."""
    return Predictor(run_dir)


@st.cache_data(show_spinner=False, max_entries=1000)
def explanation(run_dir: str, source: str | bytes, class_name: str | None = None, name: str = "") -> dict | None:
    """Grad-CAM of one image (a path, or an upload's bytes) for `class_name` (default: the class the run's model
    predicts): {"overlay": the heat map over the image, "class", "prob"}; None when the image cannot be read."""
    model = predictor(run_dir)
    try:
        image = open_image(source, name=name or (source if isinstance(source, str) else "upload"),
                           draft_size=EXPLAIN_DRAFT)
    except (ImageRefused, OSError):
        return None
    index = model.classes.index(class_name) if class_name in model.classes else None
    result = explain_image(model, image, class_index=index)
    return {"overlay": result["overlay"], "class": result["class"], "prob": result["prob"]}


def clickable_confusion(fig, metrics: dict, selected: tuple[str, str] | None = None):
    """Make each confusion-matrix cell clickable with st.plotly_chart(on_select=...).

    Plotly reports no selection for heatmap cells (streamlit#8760), so an invisible marker sits on every
    cell and takes the clicks: customdata starts [true class, predicted class]; the chosen cell gets a frame.
    """
    classes = metrics["classes"]
    cells = [(true, predicted, metrics["confusion"][i][j], plots.label(true), plots.label(predicted))
             for i, true in enumerate(classes) for j, predicted in enumerate(classes)]
    chosen = [k for k, (true, predicted, *_) in enumerate(cells) if (true, predicted) == selected]
    fig.update_traces(hoverinfo="skip", hovertemplate=None, selector=dict(type="heatmap"))
    # the axes hold the names escaped, as confusion_figure draws them; customdata[:2] the names themselves
    fig.add_scatter(x=[c[4] for c in cells], y=[c[3] for c in cells], customdata=[list(c) for c in cells],
                    mode="markers", showlegend=False, name="cells",
                    marker=dict(symbol="square-open", size=34, color="darkorange", line=dict(width=3)),
                    selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)),
                    selectedpoints=chosen,
                    hovertemplate="true %{customdata[3]}<br>predicted %{customdata[4]}<br>"
                                  "%{customdata[2]} images: click to see them<extra></extra>")
    fig.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select", dragmode=False)
    return fig


def validation_words(metrics: dict) -> str:
    """How the validation scores were measured, in a sentence (metrics["validation"] names the method)."""
    how = metrics.get("validation") or "held out"
    n_train, n_val = metrics.get("n_train"), metrics.get("n_val")
    kind = runs.validation_kind(metrics)
    if kind == "none":
        return (f"Not validated: {how}. Add a second image to each class to measure how well it generalises.")
    if kind == "cv" and (metrics.get("validation_method") or {}).get("leave_one_out"):
        return f"Validated by {how}: {n_val} images scored, each by a head fitted without it."
    if kind == "cv":
        return (f"Validated by {how}: each of the {n_val} images was scored by a head fitted without it, "
                f"and the head kept was then fitted on all of them.")
    if kind == "separate":
        return f"Validated on a separate validation set of {n_val} images; {n_train} other images trained the model."
    return f"Validated on {n_val} images held out from training ({how}); {n_train} images trained the model."


def need_first(message: str, page: str, label: str) -> None:
    """Say which earlier step to do first, link to it, and stop this page."""
    st.info(message)
    st.page_link(page, label=label, icon=":material/arrow_back:")
    st.stop()


def show_error(error: BaseException) -> None:
    """A user's mistake as a message; a DatasetError also lists the files it refused."""
    st.error(literal(error))
    refused = getattr(error, "refused", None)
    if refused:
        st.dataframe(refused, hide_index=True, column_config={"name": "file", "reason": "why it was refused"})


def progress_callback(bar):
    """A tl_core progress(done, total) callback that moves a st.progress bar."""
    def report(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Checking images: {done} of {total}")
    return report


def files_from_folder_upload(uploads) -> list[tuple[str, bytes, str, str]]:
    """Uploaded files of a folder of class folders → (name, bytes, class, sub-folder) for ingest_files.

    A folder upload names each file by its path below the chosen folder ("fashion/Bag/a.png").
    As for folders and zips, an optional single top folder wraps the class folders; a file that is
    in no class folder gets no class, so the engine refuses it with a reason. A file in a sub-folder
    of a class folder goes to that class, with the sub-folder named (the audit says so).
    """
    paths = [[part for part in upload.name.replace("\\", "/").split("/") if part not in ("", ".")]
             for upload in uploads]
    tops = {parts[0] for parts in paths if parts}
    depth = 1 if len(tops) == 1 and all(len(parts) >= 3 for parts in paths) else 0
    files = []
    for upload, parts in zip(uploads, paths):
        inner = parts[depth:]
        label = inner[0] if len(inner) >= 2 else ""
        files.append(("/".join(parts) or upload.name, upload.getvalue(), label, "/".join(inner[1:-1])))
    return files


def upload_name(uploads, fallback: str) -> str:
    """A dataset name from a folder upload's top folder."""
    for upload in uploads:
        parts = [p for p in upload.name.replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) > 1:
            return parts[0]
    return fallback or time.strftime("upload %Y-%m-%d %H:%M")


def show_run(run_dir) -> None:
    """Tell the sidebar which run this page shows (the sidebar is drawn after the page, so it never lags)."""
    st.session_state.shown_run = str(run_dir) if run_dir else None


def sidebar(slot) -> None:
    """In `slot` (a sidebar container, drawn again after the page ran): the choices the next run will take, kept
    apart from the run the page shows, which may have been trained with other choices; and the device."""
    state = st.session_state
    with slot:
        if (user := gate.space().user) is not None:
            st.caption(f"Signed in as {literal(user)}" + (" (teacher)" if gate.space().teacher else "")
                       + ": keep this page's address to come back.")
        st.markdown("**Next run** (your choices so far)")
        st.markdown(f":material/neurology: Backbone: {code(state.backbone)}  \n"
                    f":material/key: Weights: {literal(weights_label(state.weights))}")
        dataset = active_dataset()
        st.markdown(f":material/photo_library: Data: "
                    f"{literal(dataset_label(dataset)) if dataset else '*not chosen yet*'}")
        st.markdown(f":material/layers: Trains: {code(state.freeze)}")
        shown = state.get("shown_run")
        latest = state.run_dir if state.run_dir and Path(state.run_dir).is_dir() else None
        if shown and Path(shown).is_dir():
            plan = runs.read_config_record(Path(shown)).get("config", {}).get("freeze")
            st.markdown(f":material/visibility: **Showing run**: {literal(run_label(shown))}"
                        + (f", trained {code(plan)}" if plan else ""))
        elif latest:
            st.markdown(f":material/model_training: **Your latest run**: {literal(run_label(latest))}")
        else:
            st.markdown(":material/model_training: **Runs**: *none yet*")
        st.caption(f"Device: {device_name()}")
