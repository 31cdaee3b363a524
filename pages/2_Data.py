"""Step 2: bring the labelled images (one folder per class), check them, and choose how to validate."""
import streamlit as st

from pages.ui import data_audit, data_sources, nav, session, target_domain
from tl_core import datasets

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

st.title("2 · Your images")
st.write("Give a few dozen images per class, one folder per class (`cats/`, `dogs/`…). "
         "Every file is checked; files that cannot be used are listed with the reason.")
if flash := state.pop("data_flash", None):
    st.success(flash, icon=":material/check:")

data_sources.bring_images()
dataset = session.active_dataset()
if dataset is None:
    st.info("No dataset chosen yet: try the sample, or bring your own images above.")
    st.stop()
val_dataset = session.active_dataset("val_dataset_dir") if state.val_source == "separate" else None
report = datasets.audit(dataset, val_dataset)
data_audit.audit_section(dataset, report)
data_audit.validation_section(report, val_dataset)
target_domain.data_section()

st.divider()
st.page_link(nav.LAYERS_PAGE, label="Next: choose which layers train", icon=":material/arrow_forward:")
