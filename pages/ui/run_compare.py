"""The Runs page's side by side: two or more runs' settings (those that differ first), what transfer
bought when one is the other's from-scratch twin, and their curves overlaid (tl_core.use.compare)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_core import plots
from tl_core.use import compare
from tl_core.ops import runs

from pages.ui import cached, labels
from pages.ui.text import literal
from tl_core.ops import words
from tl_core.ops.filecache import folder_stamp
from tl_core.use import run_facts

# A row's name in words (the rest are RunConfig's own names, readable as they are).
SETTING_WORDS = {"val_acc": "validation accuracy", "macro_f1": "macro F1", "val_loss": "validation loss",
                 "best_epoch": "best epoch", "wall_s": "time (whole run)",
                 "learnt_params": "parameters learnt (kept model)", "freeze": "plan", "lr": "learning rate",
                 "batch_size": "batch size", "image_size": "image size", "bn_policy": "BatchNorm",
                 "label_smoothing": "label smoothing", "weight_decay": "weight decay", "probe_first": "probe first"}


def short_name(run_dir: str) -> str:
    """A legend entry: the run's name (or id), where its weights came from and what learnt."""
    row = run_facts.summary(run_dir)
    return f"{row['name']} · {labels.weights_label(row['weights'] or '?')}, learns {row['freeze']}"


def shown(setting: str, value) -> str:
    """A setting's value as text: the columns of the table mix numbers, words and flags."""
    if value is None:
        return "—"
    if setting == "val_acc":
        return run_facts.percent(value)
    if setting in ("macro_f1", "val_loss"):
        return f"{value:.3f}"
    if setting == "wall_s":
        return words.format_seconds(value)
    if setting == "weights":
        return labels.weights_label(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def side_by_side(chosen: list[str]) -> None:
    """The settings that differ, what transfer bought (a run and its from-scratch twin), the curves overlaid."""
    run_dirs = [Path(path) for path in chosen]
    try:
        rows = compare.settings_table(run_dirs)
    except ValueError as error:  # a damaged file of one of the runs: say which, compare nothing
        st.warning(f"These runs cannot be compared: {literal(error)}", icon=":material/broken_image:")
        st.stop()
    run_labels = [labels.run_label(path) for path in chosen]
    if len(set(run_labels)) < len(run_labels):  # two runs of one name made the same minute: their ids tell them apart
        run_labels = [f"{label} · {Path(path).name}" for label, path in zip(run_labels, chosen)]
    # What differs first, ticked; then what the runs share. (Column formats, not a pandas Styler's highlight:
    # marshalling a Styler cost about 12 ms of server CPU at every rerun of the page.)
    rows = [row for row in rows if row["differs"]] + [row for row in rows if not row["differs"]]
    table = pd.DataFrame([{"differs": row["differs"], "setting": SETTING_WORDS.get(row["setting"], row["setting"]),
                           **{label: shown(row["setting"], value) for label, value in zip(run_labels, row["values"])}}
                          for row in rows])
    n_differ = sum(row["differs"] for row in rows)
    st.caption(f"{n_differ} of {len(rows)} settings differ between the runs: they come first, ticked.")
    st.dataframe(table, hide_index=True, key="settings_table", height=36 * (len(table) + 1),
                 column_config={"setting": "Setting", "differs": st.column_config.CheckboxColumn("Differs")})

    for pretrained, other in ([run_dirs, run_dirs[::-1]] if len(run_dirs) == 2 else []):
        # a pretrained run and its from-scratch twin: say what transfer bought
        if compare.baseline_of(other) == pretrained.name:
            pretrained_metrics, baseline_metrics = runs.read_metrics(pretrained), runs.read_metrics(other)
            if pretrained_metrics and baseline_metrics:
                verdict = compare.transfer_verdict(pretrained_metrics, baseline_metrics)
                {"positive": st.success, "negative": st.warning}.get(verdict["kind"], st.info)(verdict["text"])

    names = [short_name(path) for path in chosen]
    curve_names = names if len(set(names)) == len(names) else run_labels
    accuracy_col, loss_col, train_loss_col = st.columns(3)
    for column, measure in ((accuracy_col, "val_acc"), (loss_col, "val_loss"), (train_loss_col, "train_loss")):
        column.plotly_chart(compare_figure(run_dirs, curve_names, measure), key=f"compare_{measure}")


def compare_figure(run_dirs: list[Path], curve_names: list[str], measure: str):
    """The runs' curves of one measure overlaid, drawn again only when one of the runs' files changed (the events
    are read only then: a copy of every event of every run at each rerun cost about 8 ms)."""
    stamps = [folder_stamp(path) for path in run_dirs]  # the figure depends on every run: keyed on all of them
    return cached.figure(run_dirs[0], lambda: plots.compare_figure(compare.curves(run_dirs, curve_names), measure),
                         "compare", measure, tuple(map(str, run_dirs)), tuple(curve_names), tuple(map(hash, stamps)))

