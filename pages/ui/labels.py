"""Things in words: a dataset, a weight source, a run, how a run was validated. Plain text: wrap a label
in text.literal() inside markdown, since it quotes names a user chose."""
from __future__ import annotations

import datetime
from pathlib import Path

import streamlit as st

from tl_core.models import backbones
from tl_core.ops import runs
from tl_core.data.datasets import Dataset

from pages.ui import gate
from pages.ui.text import literal
from tl_core.ops.words import plural
from tl_core.use import run_facts


def dataset_label(dataset: Dataset) -> str:
    """Name and size of a dataset: its images and classes (or tasks, for a labels table)."""
    if dataset.tasks:  # a labels table
        return f"{dataset.name} ({plural(len(dataset.items), 'image')}, {plural(len(dataset.tasks), 'task')})"
    return f"{dataset.name} ({plural(len(dataset.items), 'image')}, {plural(len(dataset.classes), 'class')})"


def weights_label(weights: str) -> str:
    """Where weights come from; an uploaded file by its name and the start of its content hash."""
    if weights in ("embedded", "hub", "none"):
        return {"embedded": "embedded (offline)", "hub": "from the hub", "none": "random (from scratch)"}[weights]
    digest = backbones.uploaded_weights_digest(weights)
    return f"file {Path(weights).name}" + (f" (sha256 {digest[:8]}…)" if digest else "")


def run_label(run_dir) -> str:
    """A run's readable name, its state and when it was made (its owner's name first, for the teacher);
    the id's time tells apart runs of the same name."""
    run_dir = Path(run_dir)
    state = runs.read_status(run_dir).get("state", "unknown")
    owner = runs.read_owner(run_dir) if gate.space().teacher else None
    return f"{owner + ': ' if owner else ''}{run_facts.run_name(run_dir)} ({state}, {made_at(run_dir.name)})"


def made_at(run_id: str) -> str:
    """When a run was made, from its id (20261204-201440-…): "4 Dec 20:14"; the id itself if it has no stamp."""
    try:
        stamp = datetime.datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S")
    except ValueError:
        return run_id
    return f"{stamp.day} {stamp:%b %H:%M}"


def validation_words(metrics: dict) -> str:
    """How the validation scores were measured, in a sentence (metrics["validation"] names the method)."""
    how = metrics.get("validation") or "held out"
    n_train, n_val = metrics.get("n_train"), metrics.get("n_val")
    kind = runs.validation_kind(metrics)
    if kind == "none":
        return (f"Not validated: {how}. Add a second image to each class to measure how well it generalises.")
    if kind == "cv" and (metrics.get("validation_method") or {}).get("leave_one_out"):
        return f"Validated by {how}: {plural(n_val, 'image')} scored, each by a head fitted without it."
    if kind == "cv":
        return (f"Validated by {how} instead of a hold-out: each of the {plural(n_val, 'image')} was scored by a "
                f"head fitted without it, and the head kept was then fitted on all of them.")
    if kind == "separate":
        return (f"Validated on a separate validation set of {plural(n_val, 'image')}; "
                f"{plural(n_train, 'other image')} trained the model.")
    return (f"Validated on {plural(n_val, 'image')} held out from training ({how}); "
            f"{plural(n_train, 'image')} trained the model.")


def rename_box(run_dir) -> None:
    """The run's name, editable: an empty box brings back the default ("Auto · materials · 98.6%")."""
    key = f"rename::{run_dir}"

    def save() -> None:
        runs.write_run_name(Path(run_dir), st.session_state[key])

    st.text_input("Name", value=run_facts.run_name(run_dir), key=key, on_change=save, max_chars=120,
                  help="A name to find this run again in every list; leave it empty for the default "
                       f"({literal(run_facts.default_name(run_dir))}).")  # help is markdown
