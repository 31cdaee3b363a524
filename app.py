"""Transfer Learning Studio: turn a small labelled image set into an image classifier, without code.

`streamlit run app.py`. Each step of the flow is one page in pages/; the engine is tl_core.
On a shared server (a classroom) the app asks for an access code before any page renders: see README.
"""
import streamlit as st

from pages.ui import gate, heap, jobs, nav, session, sidebar

st.set_page_config(page_title="Transfer Learning Studio", page_icon=":material/model_training:", layout="wide")
gate.harden_process()  # workspace files 0600, folders 0700
gate.refuse_uploads_before_sign_in()  # Streamlit's upload endpoint keeps files only for signed-in sessions
if gate.leave_folder_mode():  # Streamlit's folder mode ran this script (see pages/ui/gate.py): from now on no
    st.rerun()  # session's deep link runs a page file alone; start again as the router, before drawing anything
gate.frame_guard()  # in the sidebar: hides the page when another site frames it
gate.require_access_code()  # stops here until the visitor gives the code, when one is needed
session.restore_session()  # a reload or a reconnect finds the user's choices again
session.init_state()

steps = [
    st.Page(nav.BACKBONE_PAGE, title="1 · Backbone", icon=":material/neurology:", default=True),
    st.Page(nav.DATA_PAGE, title="2 · Data", icon=":material/photo_library:"),
    st.Page(nav.LAYERS_PAGE, title="3 · Layers", icon=":material/layers:"),
    st.Page(nav.TRAIN_PAGE, title="4 · Train", icon=":material/model_training:"),
    st.Page(nav.RESULTS_PAGE, title="5 · Results", icon=":material/insights:"),
    st.Page(nav.PREDICT_PAGE, title="6 · Predict", icon=":material/image_search:"),
    st.Page(nav.EXPORT_PAGE, title="7 · Export", icon=":material/package_2:"),
    st.Page(nav.RUNS_PAGE, title="8 · Runs", icon=":material/table_chart:"),
] + ([st.Page(nav.CLASS_PAGE, title="Class (teacher)", icon=":material/school:")] if gate.space().teacher else [])
current_page = st.navigation(steps)
gate.go_to_asked_page(steps, current_page)  # signed in on a deep link (/Data): that page, not the first
st.sidebar.title("Transfer Learning Studio")
# The sidebar is drawn before the page and drawn again, in its place, after it: the second shows the choices
# the page just made. A page that calls st.stop() ends the script run, and Streamlit then draws nothing
# more, so without the first drawing such a page would have no sidebar at all.
sidebar_slot = st.sidebar.empty()
gate.sign_out_control()
st.session_state.shown_run = None  # the page sets it (sidebar.show_run) when it shows a run
sidebar.draw(sidebar_slot.container())
jobs.queue()  # started with the server, so runs queued before a restart start again
try:
    with gate.routed():  # the page's own gate.enter_page() sees that this script ran the gate
        current_page.run()
finally:  # also when the page stops or reruns itself
    sidebar.draw(sidebar_slot.container())
    session.remember_session()
    heap.freeze_what_is_loaded()  # the modules a page loaded stay out of the collector's full walks
