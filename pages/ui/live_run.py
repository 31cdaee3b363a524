"""The Train page's run: live progress and curves while it is queued or running (a fragment redrawn every
second), then its outcome. A reload or a second tab finds the run again: everything is read from its folder."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core import plots
from tl_core.ops import runs

from pages.ui import cached, jobs, kinds, labels, nav, sidebar
from pages.ui.text import literal
from tl_core.ops import words
from tl_core.use import run_facts

PLOTTED = ("train_loss", "val_loss", "train_acc", "val_acc")  # drawn by the loss and accuracy figures


def read_run_events(run_dir: str) -> list[dict]:
    """Every event so far; only new lines are read at each redraw (one reader per run and session)."""
    state = st.session_state
    key = f"events::{run_dir}"
    if key not in state:
        state[key] = {"reader": runs.EventReader(Path(run_dir)), "events": []}
    state[key]["events"] += state[key]["reader"].read_new()
    return state[key]["events"]


def epoch_metrics(events: list[dict], kind_name: str) -> list[str]:
    """The kind's headline metrics (TaskKind.metrics) that its epoch_end events carry, beyond loss and accuracy."""
    return [name for name in kinds.headline_metrics(kind_name)
            if name not in PLOTTED and plots.epoch_rows(events, name)]


def charts(run_dir: str, events: list[dict]) -> None:
    """Per epoch: loss and accuracy when the events carry them, each task's score (a multi-task run), and the
    headline metrics of the run's kind (a detector's mAP, say): whatever its epoch_end events carry."""
    epochs = [event for event in events if event.get("event") == "epoch_end"]
    figures = []

    def drawn(build, name):  # redrawn only when new events came (the timer redraws every second)
        return cached.figure_for((run_dir, name, len(events)), build)

    if any(name in event for event in epochs for name in ("train_loss", "val_loss")):
        figures.append((drawn(lambda: plots.loss_figure(events), "loss"), f"loss::{run_dir}"))
    if any(name in event for event in epochs for name in ("train_acc", "val_acc")):
        figures.append((drawn(lambda: plots.accuracy_figure(events), "accuracy"), f"accuracy::{run_dir}"))
    figures += [(drawn(lambda name=name: plots.compare_figure({name: events}, name), name), f"{name}::{run_dir}")
                for name in epoch_metrics(events, kinds.of_run(run_dir))]
    for start in range(0, len(figures), 2):
        for column, (figure, key) in zip(st.columns(2), figures[start:start + 2]):
            column.plotly_chart(figure, key=key)
    if any(event.get("tasks") for event in epochs):  # a multi-task run
        st.plotly_chart(plots.task_figure(events), key=f"tasks::{run_dir}")


def _waiting(run_dir: str) -> None:
    position = jobs.queue().queue_position(Path(run_dir))
    where = f"in the queue (position {position})" if position else "for a free slot"
    wait_s = jobs.queue().expected_wait(Path(run_dir)) if position else None
    where += f", expected to start in about {words.format_seconds(wait_s)}" if wait_s else ""
    st.info(f"Waiting {where}: another run is using {jobs.device_name()}. "
            "This one starts when it ends.", icon=":material/hourglass_top:")


@st.fragment(run_every=1.0)
def live_run(run_dir: str) -> None:
    """Redrawn every second while the run is queued or running, its header (with the state) included."""
    status = runs.read_status(Path(run_dir))
    if status.get("state") not in jobs.ACTIVE_STATES:
        st.rerun()  # the whole page: shows the outcome and stops this timer
    st.subheader(f"Run {literal(labels.run_label(run_dir))}")
    events = read_run_events(run_dir)
    if status["state"] == "queued":
        _waiting(run_dir)
    fraction, text = words.progress(events, status)
    st.progress(fraction, text=text)
    notices = [e for e in events if e["event"] == "notice"]
    for notice in notices:
        if notice.get("kind") == "diverged":
            st.warning(literal(notice.get("message", "")), icon=":material/warning:")
    if notices:
        st.caption(literal(notices[-1].get("message", "")))
    st.button("Stop", key=f"stop::{run_dir}", icon=":material/stop:",
              on_click=jobs.queue().cancel, args=(Path(run_dir),))
    if any(e["event"] == "epoch_end" for e in events):
        charts(run_dir, events)
    kind_section(run_dir)


def kind_section(run_dir: str) -> None:
    """What the run's kind adds under its progress and curves (its train_section), if anything."""
    if (extra := kinds.section(kinds.of_run(run_dir), "train")) is not None:
        extra(run_dir)


def finished_run(run_dir: str, status: dict) -> None:
    """How the run ended, with its curves."""
    events = read_run_events(run_dir)
    if status.get("state") == "done":
        metrics = runs.read_metrics(Path(run_dir)) or {}
        known = run_facts.facts(run_dir)  # the same time as Results, Runs and the command line
        parts = f": {known['wall_parts_words']}" if known["wall_parts_words"] else ""
        st.success(f"Finished: {headline(metrics, kinds.of_run(run_dir))} "
                   f"(best epoch {metrics.get('best_epoch', '—')}; {known['wall_words']} in all{parts}).",
                   icon=":material/check_circle:")
        for notice in events:
            if notice["event"] == "notice" and notice.get("kind") == "diverged":
                st.warning(literal(notice.get("message", "")), icon=":material/warning:")
        if metrics.get("kept", {}).get("reason"):
            st.info(literal(metrics["kept"]["reason"] + "."), icon=":material/info:")
        st.page_link(nav.RESULTS_PAGE, label="See the results: per class, confusion matrix, mistakes",
                     icon=":material/insights:")
    elif status.get("state") == "failed":
        st.error(f"The run failed: {literal(status.get('error') or 'no reason given')}")
    elif status.get("state") == "cancelled":
        st.warning("The run was stopped before it finished.", icon=":material/stop_circle:")
    elif status.get("state") == runs.DAMAGED:
        st.error(f"This run's files are damaged: {literal(status.get('error'))}. Delete it on the Runs page.")
        st.page_link(nav.RUNS_PAGE, label="8 · Runs", icon=":material/table_chart:")
    if any(e["event"] == "epoch_end" for e in events):
        charts(run_dir, events)
    kind_section(run_dir)


def headline(metrics: dict, kind_name: str) -> str:
    """The final score in words: validation accuracy, or the first headline metric of the kind that the run has."""
    if "val_acc" not in metrics:
        for name in kinds.headline_metrics(kind_name):
            if isinstance(metrics.get(name), (int, float)):
                return f"final {literal(name)} **{metrics[name]:.3g}**"
    interval = run_facts.facts_interval(metrics)
    return (f"final validation accuracy **{run_facts.percent(metrics.get('val_acc'))}**"
            + (f" (95 %: {run_facts.interval_text(interval)})" if interval else ""))


def run_section(run_dir: str, status: dict) -> None:
    """The session's run: live while queued or running, else its outcome."""
    sidebar.show_run(run_dir)
    if status.get("state") in jobs.ACTIVE_STATES:
        live_run(run_dir)
    else:
        st.subheader(f"Run {literal(labels.run_label(run_dir))}")
        finished_run(run_dir, status)
