"""Step 4: set the hyper-parameters, start a run, and watch it learn live."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import streamlit as st

from pages.ui import jobs, kinds, labels, live_run, models, nav, session, train_settings, widgets
from pages.ui.text import code, literal
from tl_core.fit import run_data
from tl_core.ops import runs

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

st.title("4 · Train")
dataset, folder = session.active_dataset(), session.dataset_folder()
if dataset is None and (folder is None or kinds.class_folders(kinds.current())):
    nav.need_first("Choose your images first: training needs a dataset.", nav.DATA_PAGE, "2 · Data")
try:
    session.sync_image_size()
    session.sync_lr()
    default_size, fixed_size = models.backbone_input_size(state.backbone)
except widgets.USER_ERRORS as error:
    widgets.show_error(error)
    nav.need_first("Choose a backbone that builds first.", nav.BACKBONE_PAGE, "1 · Backbone")
if not state.run_dir or not Path(state.run_dir).is_dir():  # a reload or a second tab finds the live run again
    active = jobs.newest_active_run()
    state.run_dir = str(active) if active else None

if dataset is not None:
    validation = run_data.planned_validation(dataset.labels(), state.freeze, state.augment, state.val_fraction,
                                             separate=state.val_source == "separate" and bool(state.val_dataset_dir))
    data_words = f"{literal(labels.dataset_label(dataset))}, {validation}"
else:  # a kind's own layout: its Data section checked it
    data_words = literal(folder.name)
st.markdown(f"**Data** {data_words} · "
            f"**Backbone** {code(state.backbone)} ({literal(labels.weights_label(state.weights))}) · "
            f"**Learns** {code(state.freeze)}")
if dataset is not None and "cross-validation" in validation and state.val_source == "split":
    # said where it is seen: the Data page's hold-out does not apply to a head fitted on cached features
    st.info(f"Validation: {validation}, instead of the {state.val_fraction:.0%} hold-out set on the Data page. "
            "Only the head learns, on features computed once, so every image can be scored by a head fitted "
            "without it and none is set aside.", icon=":material/rule:")

run_status = runs.read_status(Path(state.run_dir)) if state.run_dir else {}
train_settings.settings_section(dataset, default_size, fixed_size,
                                run_active=run_status.get("state") in jobs.ACTIVE_STATES)
if state.run_dir:
    live_run.run_section(state.run_dir, run_status)
