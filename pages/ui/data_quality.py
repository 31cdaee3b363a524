"""Data that helps itself, on the Results page: recall per class and what was done about imbalance, the likely
label errors to fix, and which unlabelled images to label next. Widgets only; tl_core.quality.label_errors,
tl_core.quality.active and tl_core.data.datasets.versions do the work.

Not a page: app.py does not register it with st.navigation.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.ui import gate, jobs, nav, widgets
from pages.ui.text import literal
from tl_core.quality import active
from tl_core.data import datasets
from tl_core.quality import label_errors
from tl_core.ops import runs

SUSPECTS_SHOWN = 24
COLUMNS = 4
CHOICES = {"keep": "Keep", "relabel": "Relabel", "drop": "Drop"}
SKIP = "(skip)"


def imbalance_headline(metrics: dict) -> None:
    """Under the headline: each class's recall, the weakest first, and the sentence on class weighting."""
    recall = {name: scores["recall"] for name, scores in metrics.get("per_class", {}).items()
              if scores.get("support")}
    if len(recall) > 1:
        weakest = sorted(recall.items(), key=lambda pair: pair[1])
        shown = ", ".join(f"{literal(name)} {value:.0%}" for name, value in weakest[:6])
        more = f" and {len(weakest) - 6} more" if len(weakest) > 6 else ""
        st.caption(f"Recall per class (the share of its validation images found), the weakest first: {shown}{more}.")
    words = (metrics.get("class_weights") or {}).get("words")
    if words:
        st.caption(literal(words[:1].upper() + words[1:] + "."))


@st.cache_data(show_spinner=False, max_entries=256)  # a class of 30 has more runs than 20 open at once
def _suspects(run_dir: str, written: float) -> dict:
    """The run's likely label errors; `written` (when its probabilities were saved) keys the cache."""
    return label_errors.suspects(run_dir)


def _saved_at(run_dir: Path) -> float:
    try:
        return runs.RunFolder(run_dir).val_probs.stat().st_mtime
    except OSError:
        return 0.0


def _multi_task(run_dir: Path) -> bool:
    """Label errors and suggestions are for single-task runs (a class per image)."""
    return bool((runs.read_metrics(run_dir) or {}).get("tasks"))


def _choice_key(path: str) -> str:
    return f"suspect::{path}"


def _make_version(run_dir: str, relabel: dict, drop: list) -> None:
    try:
        made = label_errors.fix_labels(run_dir, relabel, drop)
    except widgets.USER_ERRORS as error:
        st.session_state.suspects_error = str(error)
        return
    st.session_state.cleaned = {"run": run_dir, **{key: str(dataset.root) for key, dataset in made.items()},
                                "words": "; ".join(f"{dataset.name}: {datasets.describe_changes(dataset.changes)}"
                                                   for dataset in made.values())}
    if "dataset_dir" in made:  # the next run of this session uses the cleaned set
        st.session_state.dataset_dir = str(made["dataset_dir"].root)


def _train_on(run_dir: str, made: dict, key: str) -> None:
    try:
        config = label_errors.retrain_config(run_dir, made.get("dataset_dir"), made.get("val_dataset_dir"))
        st.session_state.run_dir = str(jobs.queue().submit(config))
        st.session_state[key] = _version_of(made)
    except widgets.USER_ERRORS as error:
        st.session_state[f"{key}_error"] = str(error)


def _version_of(made: dict) -> str:
    return made.get("dataset_dir") or made.get("val_dataset_dir") or ""


def label_errors_section(run_dir: Path) -> None:
    """The images whose label the out-of-fold predictions disagree with; keep, relabel or drop each; a new
    dataset version, and a new run on it, one click each."""
    state = st.session_state
    if _multi_task(run_dir):
        return
    st.subheader("Likely label errors")
    try:
        report = _suspects(str(run_dir), _saved_at(run_dir))
    except widgets.USER_ERRORS as error:
        st.warning(f"Label errors cannot be looked for: {literal(error)}", icon=":material/broken_image:")
        return
    found = report["suspects"]
    st.caption(f"Confident learning (cleanlab) on the predictions of images the model did not train on: "
               f"{literal(report['scope'])}.")
    if not found:
        if report["judged"]:
            st.success(f"None of the {report['judged']} images judged looks mislabelled.", icon=":material/check:")
        return
    st.write(f"**{len(found)} of {report['judged']} images** look mislabelled: the model, not having seen them, "
             f"is sure they belong to another class.")
    if not st.toggle("Review them", key="review_suspects"):
        return
    shown = found[:SUSPECTS_SHOWN]
    if len(found) > SUSPECTS_SHOWN:
        st.caption(f"Showing the {SUSPECTS_SHOWN} likeliest.")
    columns = st.columns(COLUMNS)
    for i, suspect in enumerate(shown):
        with columns[i % COLUMNS]:
            image = widgets.thumbnail(suspect["path"], 128)
            if image is not None:
                st.image(image, width=128)
            st.markdown(f"labelled *{literal(suspect['label'])}*, looks like "
                        f"*{literal(suspect['suggested'])}* ({suspect['suggested_prob']:.0%})")
            st.radio("What to do", list(CHOICES), key=_choice_key(suspect["path"]), horizontal=True,
                     label_visibility="collapsed",
                     format_func=lambda choice, s=suspect: (f"Relabel to {literal(s['suggested'])}"
                                                             if choice == "relabel" else CHOICES[choice]))
    chosen = {s["path"]: (state.get(_choice_key(s["path"])), s["suggested"]) for s in shown}
    relabel = {path: suggested for path, (choice, suggested) in chosen.items() if choice == "relabel"}
    drop = [path for path, (choice, _) in chosen.items() if choice == "drop"]
    st.button(f"Make a new dataset version ({len(relabel)} relabelled, {len(drop)} dropped)", key="suspects_apply",
              icon=":material/difference:", disabled=not (relabel or drop), on_click=_make_version,
              args=(str(run_dir), relabel, drop))
    if error := state.pop("suspects_error", None):
        st.error(literal(error))
    _version_made(run_dir, "cleaned", "cleaned_run")


def _version_made(run_dir: Path, made_key: str, run_key: str) -> None:
    """The dataset version this section made for this run, if any, and the button that trains on it."""
    made = st.session_state.get(made_key) or {}
    if made.get("run") == str(run_dir):
        st.success(f"New dataset version made ({literal(made['words'])}); the old one is unchanged.",
                   icon=":material/check:")
        _train_button(run_dir, made, run_key)


def _train_button(run_dir: Path, made: dict, key: str) -> None:
    """One click: a new run with this run's settings on the new version; then a link to watch it."""
    state = st.session_state
    if state.get(key) == _version_of(made):
        st.page_link(nav.TRAIN_PAGE, label="The new run is queued: watch it", icon=":material/model_training:")
        return
    st.button("Train on the new version (same settings)", key=f"{key}_start", icon=":material/play_arrow:",
              on_click=_train_on, args=(str(run_dir), made, key))
    if error := state.pop(f"{key}_error", None):
        st.error(literal(error))


def _pools(run_dir: Path) -> list[datasets.Dataset]:
    """Unlabelled image sets of this user: the run's target images first, then the others, newest first."""
    found = [d for d in datasets.list_datasets(gate.space().data_workspace) if d.source.get("unlabelled")]
    target = runs.read_config_record(run_dir).get("config", {}).get("target_dir")
    return sorted(found, key=lambda d: str(d.root) != str(target))


def label_next_section(run_dir: Path) -> None:
    """Which unlabelled images to label next, with the model's guess to confirm or correct; a new version."""
    state = st.session_state
    if _multi_task(run_dir):
        return
    st.subheader("What to label next")
    pools = _pools(run_dir)
    if not pools:
        st.caption("Give unlabelled images on the Data page (\"Where will you use the model?\"): the studio then "
                   "suggests which of them to label next, those whose labels would teach this model the most.")
        return
    by_root = {str(d.root): d for d in pools}
    if state.get("label_next_pool") not in by_root:
        state.label_next_pool = next(iter(by_root))
    st.selectbox("Unlabelled images", list(by_root), key="label_next_pool",
                 format_func=lambda root: f"{by_root[root].name} ({len(by_root[root].items)} images)")
    wanted = {"run": str(run_dir), "pool": state.label_next_pool}
    if st.button("Suggest images to label", key="label_next_start", icon=":material/lightbulb:"):
        try:
            with st.spinner("Passing the unlabelled images through the model…"):
                state.label_next = {**wanted, **active.suggest(run_dir, by_root[state.label_next_pool], k=20)}
        except widgets.USER_ERRORS as error:
            st.error(literal(error))
    _version_made(run_dir, "labelled_version", "labelled_run")
    result = state.get("label_next") or {}
    if {key: result.get(key) for key in wanted} != wanted:
        st.caption("The model's least sure images, unlike each other and unlike those already labelled, first.")
        return
    st.caption(literal(result["words"][:1].upper() + result["words"][1:] + "."))
    classes = (runs.read_metrics(run_dir) or {}).get("classes", [])
    columns = st.columns(COLUMNS)
    for i, suggestion in enumerate(result["suggestions"]):
        with columns[i % COLUMNS]:
            image = widgets.thumbnail(suggestion["path"], 128)
            if image is not None:
                st.image(image, width=128)
            options = [SKIP, *classes]
            key = f"label_next::{suggestion['path']}"
            if key not in state:
                state[key] = suggestion["guess"] if suggestion["guess"] in classes else SKIP
            st.selectbox(f"Guess: {literal(suggestion['guess'])} ({suggestion['prob']:.0%})", options, key=key)
    labelled = [(s["path"], state[f"label_next::{s['path']}"]) for s in result["suggestions"]
                if state.get(f"label_next::{s['path']}", SKIP) != SKIP]
    st.button(f"Add these {len(labelled)} labelled images as a new dataset version", key="label_next_add",
              icon=":material/library_add:", disabled=not labelled, on_click=_add_labelled, args=(run_dir, labelled))
    if error := state.pop("label_next_error", None):
        st.error(literal(error))


def _add_labelled(run_dir: Path, labelled: list) -> None:
    state = st.session_state
    try:
        version = active.add_labelled(runs.read_config(run_dir).dataset_dir, labelled)
    except widgets.USER_ERRORS as error:
        state.label_next_error = str(error)
        return
    state.labelled_version = {"run": str(run_dir), "dataset_dir": str(version.root),
                              "words": f"{version.name}: {datasets.describe_changes(version.changes)}"}
    state.dataset_dir = str(version.root)
    state.pop("label_next", None)  # the images added are no longer in the pool's suggestions
