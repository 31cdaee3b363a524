"""Step 2: what the model learns, then its images: for a classifier, one folder per class, checked, and how to
validate. Another task kind draws its own body here (pages/ui/kinds.py)."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
import streamlit as st

from pages.ui import data_audit, data_sources, kinds, nav, session, target_domain
from tl_core.data import datasets

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own


def show_flash() -> None:
    """What the last action did (it reran the page), said once."""
    if flash := state.pop("data_flash", None):
        st.success(flash, icon=":material/check:")


def class_folder_data() -> None:
    """The classifier's images: bring them, check them, choose how to validate, and where they will be used."""
    st.write("Give a few dozen images per class, one folder per class (`cats/`, `dogs/`…). "
             "Every file is checked; files that cannot be used are listed with the reason.")
    show_flash()
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


st.title("2 · Your images")
gate.quota_caption()
kinds.kind_choice()
if (kind_data := kinds.section(kinds.current(), "data")) is not None:
    show_flash()
    kind_data()
else:
    class_folder_data()

st.divider()
st.page_link(nav.LAYERS_PAGE, label="Next: choose which layers train", icon=":material/arrow_forward:")
