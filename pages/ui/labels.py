"""Things in words: a dataset, a weight source, a run, how a run was validated. Plain text: wrap a label
in text.literal() inside markdown, since it quotes names a user chose."""
from __future__ import annotations

from pathlib import Path

from tl_core.models import backbones
from tl_core.ops import runs
from tl_core.data.datasets import Dataset

from pages.ui import gate
from tl_core.ops import words


def dataset_label(dataset: Dataset) -> str:
    """Name and size of a dataset: its images and classes (or tasks, for a labels table)."""
    if dataset.tasks:  # a labels table
        return f"{dataset.name} ({len(dataset.items)} images, {len(dataset.tasks)} tasks)"
    return f"{dataset.name} ({len(dataset.items)} images, {len(dataset.classes)} classes)"


def weights_label(weights: str) -> str:
    """Where weights come from; an uploaded file by its name and the start of its content hash."""
    if weights in ("embedded", "hub", "none"):
        return {"embedded": "embedded (offline)", "hub": "from the hub", "none": "random (from scratch)"}[weights]
    digest = backbones.uploaded_weights_digest(weights)
    return f"file {Path(weights).name}" + (f" (sha256 {digest[:8]}…)" if digest else "")


def run_label(run_dir) -> str:
    """Name, id, state and accuracy of a run (its owner's name first, for the teacher)."""
    row = words.summarize(Path(run_dir))
    accuracy = f", {row['val_acc']:.1%}" if row.get("val_acc") is not None else ""
    name = f"{row['name']} · " if row.get("name") else ""
    owner = runs.read_owner(Path(run_dir)) if gate.space().teacher else None
    return f"{owner + ': ' if owner else ''}{name}{row['run_id']} ({row['state']}{accuracy})"


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
