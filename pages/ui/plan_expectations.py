"""The Layers page's word on accuracy before training: what each plan is expected to give on data of this size
(tl_core.plan.expectations: the bench's figures, and the Auto plan's measurement on these images when a run made
one), with a warning when the chosen plan is one that the figures say loses against the default."""
from __future__ import annotations

import streamlit as st

from pages.ui.text import literal
from tl_core.plan import auto_plan, expectations


def expectation_section(dataset, freeze: str, backbone: str) -> None:
    """Expected accuracy of each plan for `dataset`'s size; a warning if `freeze` is expected to lose."""
    if dataset is None or not dataset.items:
        return
    per_class = len(dataset.items) / max(dataset.num_outputs, 1)
    measured = auto_plan.latest_measurement(str(dataset.root), backbone)
    lines = expectations.expectation_lines(per_class, measured)
    if not lines:
        return
    st.markdown(f"**What each plan is expected to give** (about {per_class:.0f} images a class)")
    for line in lines:
        st.caption(literal(line))
    verdict = expectations.verdict(freeze, per_class, measured)
    if verdict:
        st.warning(literal(verdict), icon=":material/trending_down:")
