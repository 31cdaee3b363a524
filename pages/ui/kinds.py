"""The app side of task kinds: which kinds the Data page offers, and the page sections a kind brings.

The Data page first asks "What should the model learn?" among tl_core.kinds.all_kinds() (title and summary;
the classifier first and the default). The answer is st.session_state["task"], saved with the user's other
choices; the Train page makes RunConfig(task=...) with it. A kind other than the classifier may bring an app
module, pages/ui/kind_<name>.py (<name> = TaskKind.name), with any of these functions; each is optional, and
where one is absent the step page draws its own body:

  data_section()            the Data page's body after the kind choice: ingest (the kind's own ingest, into
                            gate.space().data_workspace / "datasets", so a classroom user owns it), the audit,
                            and st.session_state["dataset_dir"] = the dataset folder (str). A reload keeps it
                            only when the folder holds a manifest.json (tl_core.ops.spaces.check_restored). It may
                            set st.session_state["data_flash"] before st.rerun() to say what it did.
                            Absent: the class-folder Data page.
  layers_section()          the Layers page's body. Absent: the generic layer-group choice (the freeze plan).
  train_section(run_dir)    drawn under the Train page's generic live progress and curves (inside the
                            fragment redrawn every second while the run is live), and under a finished run.
                            The curves plot the loss and accuracy its epoch_end events carry, and each of
                            TaskKind.metrics found in them (a detector's "map50" per epoch, say).
  results_section(run_dir)  the Results page's body for a run of the kind, under the run picker and the
                            run's state (training, failed, stopped, damaged). Absent: the classifier's body.
  predict_section(run_dir)  the Predict page's body for a finished run of the kind. Absent: the classifier's.
  export_section(run_dir)   the Export page's body. Absent: a choice of TaskKind.export_formats, the kind's
                            export hook called as export(run_dir, fmt, None), and the dict it returns shown
                            (with a download when it names a "zip" file).

run_dir is a pathlib.Path or a str. A run's kind is its config's task (kinds.of_run). Sections are plain
Streamlit code: give every widget a key that starts with the kind's name, show user-supplied names with
pages.ui.text.literal (or st.text), and use pages.ui helpers freely (widgets.show_error, widgets.USER_ERRORS,
uploads.ingest for a progress bar, jobs.queue() to submit a run, labels, models). Pages ask
section(kind, "results") and never branch on a kind's name. The classifier, and a multi-task run that learns
from a labels table, have no module: the step pages' own bodies are theirs.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from tl_core import kinds
from tl_core.ops import runs

CLASSIFY = "classify"
SECTIONS = ("data", "layers", "train", "results", "predict", "export")


@dataclass(frozen=True)
class Choice:
    """A kind as the Data page offers it."""
    name: str
    title: str
    summary: str


# The classifier's words, for an engine where tl_core.kinds does not list it (its hooks are tl_core's own loop).
_CLASSIFY_CHOICE = Choice(CLASSIFY, "Classify images",
                          "A label for each image, learnt from folders of examples (one folder per class).")


def module_name(kind_name: str) -> str:
    """The app module of a kind (tests point it elsewhere)."""
    return f"pages.ui.kind_{kind_name}"


@functools.lru_cache(maxsize=None)
def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:  # the module exists but something it imports does not: that is a bug to see
            raise
        return None


def section(kind_name: str, name: str):
    """The kind's `<name>_section` function, or None when the kind brings none (the page draws its own)."""
    if name not in SECTIONS:
        raise ValueError(f"{name!r} is not a page section: one of {', '.join(SECTIONS)}")
    module = _import(module_name(kind_name))
    return getattr(module, f"{name}_section", None) if module is not None else None


def choices() -> list[Choice]:
    """The kinds to choose from, the classifier first."""
    offered = {kind.name: Choice(kind.name, kind.title, kind.summary) for kind in kinds.all_kinds()}
    first = offered.pop(CLASSIFY, _CLASSIFY_CHOICE)
    return [first, *offered.values()]


def info(kind_name: str) -> kinds.TaskKind | None:
    """The engine's record of a kind (export formats, headline metrics), or None for an unlisted classifier."""
    try:
        return kinds.get(kind_name)
    except ValueError:
        return None


def headline_metrics(kind_name: str) -> tuple[str, ...]:
    """The kind's headline metric names, best first (TaskKind.metrics); none for an unlisted kind."""
    kind = info(kind_name)
    return tuple(kind.metrics) if kind else ()


def option(kind_name: str, key: str, default=None):
    """One of TaskKind.options of a kind (`default` when the kind does not say, or is an unlisted classifier)."""
    kind = info(kind_name)
    return kind.options.get(key, default) if kind else default


def current() -> str:
    """The kind of the next run (the Data page's choice), the classifier when the choice is no longer offered."""
    name = st.session_state.get("task") or CLASSIFY
    return name if name in {choice.name for choice in choices()} else CLASSIFY


def of_run(run_dir) -> str:
    """The kind of a run, from its config (a run made before kinds, or with a damaged config: the classifier)."""
    config = runs.read_config_record(Path(run_dir)).get("config")
    task = config.get("task") if isinstance(config, dict) else None
    return task if isinstance(task, str) and task else CLASSIFY


def class_folders(kind_name: str) -> bool:
    """Whether the kind's datasets come from the class-folder Data page (tl_core.data.datasets, with classes), so the
    pages may show their classes, images and audit; a kind with its own data section keeps its own layout."""
    return section(kind_name, "data") is None


def kind_choice() -> None:
    """The Data page's first question; changing the answer forgets the dataset made for the other kind."""
    offered = choices()
    state = st.session_state
    state.task = current()
    st.radio("What should the model learn?", [choice.name for choice in offered], key="task",
             format_func={choice.name: choice.title for choice in offered}.get,
             captions=[choice.summary for choice in offered], on_change=_forget_dataset)


def _forget_dataset() -> None:
    for key in ("dataset_dir", "val_dataset_dir"):
        st.session_state[key] = None
