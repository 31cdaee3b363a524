"""Models the pages hold in memory, cached per server: a backbone's structure, a finished run's predictor,
and the heat maps it draws."""
from __future__ import annotations

import streamlit as st

from tl_core.models import backbones
from tl_core.data.datasets import ImageRefused, open_image
from tl_core.use.explain import explain_image
from tl_core.use.predict import Predictor

EXPLAIN_DRAFT = 512  # heat maps and predictions decode big photos at about this size: memory stays small


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
