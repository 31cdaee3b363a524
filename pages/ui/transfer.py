"""The Results page's "Did pretraining help?": the same network trained from random weights on the same
images and budget, and what the pretrained weights brought (tl_core.use.compare)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core import plots
from tl_core.use import compare
from tl_core.ops import runs

from pages.ui import jobs, labels, nav, widgets
from pages.ui.text import literal


def start_baseline(run_dir: Path) -> None:
    """Queue the from-scratch twin of `run_dir`; a user error is shown on the next run of the page."""
    try:
        st.session_state.run_dir = str(compare.start_scratch_baseline(jobs.queue(), run_dir))
    except widgets.USER_ERRORS as error:
        st.session_state.baseline_error = str(error)


def transfer_section(run_dir: Path) -> None:
    """Offer the from-scratch baseline; once it ran, the verdict and both curves."""
    state = st.session_state
    st.subheader("Did pretraining help?")
    config = runs.read_config_record(run_dir).get("config", {})
    twin_of = compare.baseline_of(run_dir)  # set when this run is itself a from-scratch baseline
    if twin_of:
        pretrained_dir, baseline = run_dir.parent / Path(str(twin_of)).name, run_dir
    else:
        pretrained_dir, baseline = run_dir, compare.find_baseline(run_dir)
    if config.get("weights") == "none" and not twin_of:
        st.caption("This run started from random weights itself: there is no pretraining to compare.")
    elif baseline is None:
        st.caption("Train the same network on the same images and budget from random weights, every layer "
                   "learning: the difference is what the pretrained weights bring.")
        st.button("Compare with training from scratch", key="start_baseline", icon=":material/compare_arrows:",
                  on_click=start_baseline, args=(run_dir,))
        if error := state.pop("baseline_error", None):
            st.error(literal(error))
    else:
        baseline_state = runs.read_status(baseline).get("state")
        pretrained_metrics, baseline_metrics = runs.read_metrics(pretrained_dir), runs.read_metrics(baseline)
        if baseline_state in jobs.ACTIVE_STATES:
            widgets.wait_for(str(baseline), "The from-scratch run {run} is {state}; the comparison appears here "
                                            "when it ends.")
            st.page_link(nav.TRAIN_PAGE, label="Watch it on the Train page", icon=":material/model_training:")
        elif baseline_state == "done" and pretrained_metrics and baseline_metrics \
                and "val_acc" in pretrained_metrics and "val_acc" in baseline_metrics:
            verdict = compare.transfer_verdict(pretrained_metrics, baseline_metrics)
            {"positive": st.success, "negative": st.warning}.get(verdict["kind"], st.info)(verdict["text"])
            curves = compare.curves([pretrained_dir, baseline], ["pretrained", "from scratch"])
            st.plotly_chart(plots.compare_figure(curves, "val_acc"), key="transfer_chart")
            st.page_link(nav.RUNS_PAGE, label="Compare the two runs setting by setting on the Runs page",
                         icon=":material/table_chart:")
        elif twin_of:
            st.caption(f"This run trained from scratch as the baseline of {literal(twin_of)}, "
                       "whose results are gone.")
        else:
            st.warning(f"The from-scratch run {literal(labels.run_label(baseline))} ended without results "
                       f"({baseline_state}).", icon=":material/stop_circle:")
            st.button("Train from scratch again", key="start_baseline", icon=":material/replay:",
                      on_click=start_baseline, args=(run_dir,))
