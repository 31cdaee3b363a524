"""A tiny task kind for the tests of the app's kind seam: "tally" answers each image with its size.

Its engine hooks (registered with tl_core.kinds by the tests) and its app sections (what a
pages/ui/kind_<name>.py module holds) live in this one module; tests point pages.ui.kinds at it.
Training is not run by the app tests (the fake job manager), so `fit` is never called.
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from tl_core import kinds
from tl_core.ops import runs

NAME = "tally"


def ingest(folder) -> Path:
    """The folder itself, when it holds at least one PNG."""
    folder = Path(folder)
    if not any(folder.glob("*.png")):
        raise ValueError(f"{folder}: no .png image to tally")
    return folder


class Tally:
    def predict(self, image) -> dict:
        return {"width": image.width, "height": image.height}


def predictor(run_dir) -> Tally:
    return Tally()


def export(run_dir, fmt, out_dir) -> dict:
    out = Path(out_dir or Path(run_dir) / "export" / fmt)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tally.{fmt}").write_text(json.dumps({"kind": NAME}))
    return {"format": fmt, "path": str(out / f"tally.{fmt}")}


def fit(config, run_dir, emit, strategy):
    raise AssertionError("the app tests never train")


evaluate = fit

KIND = kinds.TaskKind(name=NAME, title="Tally images", summary="Says how big each image is.",
                      layout="a folder of PNG images", fit=f"{__name__}:fit", ingest=f"{__name__}:ingest",
                      evaluate=f"{__name__}:evaluate", predictor=f"{__name__}:predictor",
                      export=f"{__name__}:export", export_formats=("json", "txt"), metrics=("val_tally",))


# ---------------------------------------------------------------- the app sections (pages/ui/kind_tally.py)
def data_section() -> None:
    folder = st.text_input("Folder of PNG images", key="tally_folder")
    if st.button("Tally this folder", key="tally_use"):
        st.session_state["dataset_dir"] = str(kinds.get(NAME).call("ingest", folder))
    if st.session_state.get("dataset_dir"):
        st.text(f"tally data: {Path(st.session_state['dataset_dir']).name}")


def results_section(run_dir) -> None:
    metrics = runs.read_metrics(Path(run_dir)) or {}
    st.metric("Tally", metrics.get("val_tally"))


def train_section(run_dir) -> None:
    st.text(f"tally train section: {Path(run_dir).name}")


def predict_section(run_dir) -> None:
    st.text(f"tally predict section: {Path(run_dir).name}")
