"""Widgets several pages draw: a user's mistake as a message, a progress bar for tl_core, thumbnails,
the clickable confusion matrix, the choice of a finished run, and a notice that waits for a run to end."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core import plots
from tl_core.models import backbones
from tl_core.ops import runs
from tl_core.config import ConfigError
from tl_core.data.datasets import DatasetError, ImageRefused, open_image
from tl_core.ops.storage import StorageFull

from pages.ui import jobs, labels, nav, sidebar
from pages.ui.text import literal

# Errors a user can cause, or a full disk; pages show their message, never a traceback.
USER_ERRORS = (DatasetError, ConfigError, backbones.WeightsUnavailable, ValueError, FileNotFoundError, StorageFull)


def show_error(error: BaseException) -> None:
    """A user's mistake as a message; a DatasetError also lists the files it refused."""
    st.error(literal(error))
    refused = getattr(error, "refused", None)
    if refused:
        st.dataframe(refused, hide_index=True, column_config={"name": "file", "reason": "why it was refused"})


def progress_callback(bar):
    """A tl_core progress(done, total) callback that moves a st.progress bar."""
    def report(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Checking images: {done} of {total}")
    return report


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(path: str, size: int = 96):
    """A small RGB copy of an image file for galleries; None when it cannot be read."""
    try:
        image = open_image(path, draft_size=2 * size)
        image.thumbnail((size, size))
    except (ImageRefused, OSError, ValueError):
        return None
    return image


def clickable_confusion(fig, metrics: dict, selected: tuple[str, str] | None = None):
    """Make each confusion-matrix cell clickable with st.plotly_chart(on_select=...).

    Plotly reports no selection for heatmap cells (streamlit#8760), so an invisible marker sits on every
    cell and takes the clicks: customdata starts [true class, predicted class]; the chosen cell gets a frame.
    """
    classes = metrics["classes"]
    cells = [(true, predicted, metrics["confusion"][i][j], plots.label(true), plots.label(predicted))
             for i, true in enumerate(classes) for j, predicted in enumerate(classes)]
    chosen = [k for k, (true, predicted, *_) in enumerate(cells) if (true, predicted) == selected]
    fig.update_traces(hoverinfo="skip", hovertemplate=None, selector=dict(type="heatmap"))
    # the axes hold the names escaped, as confusion_figure draws them; customdata[:2] the names themselves
    fig.add_scatter(x=[c[4] for c in cells], y=[c[3] for c in cells], customdata=[list(c) for c in cells],
                    mode="markers", showlegend=False, name="cells",
                    marker=dict(symbol="square-open", size=34, color="darkorange", line=dict(width=3)),
                    selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)),
                    selectedpoints=chosen,
                    hovertemplate="true %{customdata[3]}<br>predicted %{customdata[4]}<br>"
                                  "%{customdata[2]} images: click to see them<extra></extra>")
    fig.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select", dragmode=False)
    return fig


def pick_finished_run(key: str, label: str = "Model (a finished run)") -> Path:
    """A select box of the finished runs, the session's run first chosen; stops the page when there is none."""
    finished = jobs.finished_runs()
    if not finished:
        nav.need_first("No finished run yet: train a model first.", nav.TRAIN_PAGE, "4 · Train")
    if st.session_state.get(key) not in finished:
        st.session_state[key] = st.session_state.run_dir if st.session_state.run_dir in finished else finished[0]
    st.selectbox(label, finished, key=key, format_func=labels.run_label)
    sidebar.show_run(st.session_state[key])
    return Path(st.session_state[key])


@st.fragment(run_every=2.0)
def wait_for(watched: str, message: str) -> None:
    """`message` while the run `watched` is queued or running ("{run}", "{state}": its label and state, as they
    are now); the whole page again as soon as it ends."""
    state_now = runs.read_status(Path(watched)).get("state")
    if state_now not in jobs.ACTIVE_STATES:
        st.rerun()
    st.info(message.format(run=literal(labels.run_label(watched)), state=state_now),
            icon=":material/hourglass_top:")
