"""The classroom gate: the access code, who the visitor is, and what they own (their space).

app.py calls require_access_code() before any page code runs. On a laptop (no access code) everyone
owns everything; on a shared server each signed-in user has their own space (tl_core.ops.spaces).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time

import streamlit as st

from pages.ui.text import literal
from tl_core.ops import spaces
from tl_core.ops.storage import workspace_root

ACCESS_CODE_ENV = "TL_STUDIO_ACCESS_CODE"
TEACHER_CODE_ENV = "TL_STUDIO_TEACHER_CODE"
IDENTITY_PARAM = "me"  # the page address carries the signed name, so a reload finds the same user
_LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")
# Another site could show this app in a frame and trick a visitor into clicks (Streamlit sends no
# X-Frame-Options header): framed by anyone, the page hides itself.
_FRAME_GUARD = ("<script>if (window.top !== window.self) { document.documentElement.style.display = 'none'; }"
                "</script>")


def frame_guard() -> None:
    st.sidebar.html(_FRAME_GUARD, unsafe_allow_javascript=True)


def access_code() -> str | None:
    """The access code of a shared server: $TL_STUDIO_ACCESS_CODE, else `access_code` in Streamlit secrets."""
    return _setting(ACCESS_CODE_ENV, "access_code")


def teacher_code() -> str | None:
    """The teacher's code on a classroom server: $TL_STUDIO_TEACHER_CODE, else `teacher_code` in secrets."""
    return _setting(TEACHER_CODE_ENV, "teacher_code")


def _setting(env: str, secret: str) -> str | None:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    try:
        return str(st.secrets.get(secret, "")).strip() or None
    except Exception:  # no secrets.toml at all
        return None


def listens_on_network() -> bool:
    """Whether browsers on other machines can reach this server (Streamlit's default, with no address set)."""
    if st.get_option("global.appTest"):
        return False  # driven by tests: no server, no network
    return (st.get_option("server.address") or "").strip() not in _LOCAL_ADDRESSES


def require_access_code() -> None:
    """Before any page renders: ask for the access code when one is set; refuse to serve the network without one."""
    code = access_code()
    if code is None:
        if listens_on_network():
            st.error(f"This server listens on the network ({st.get_option('server.address') or 'every address'}) "
                     f"but has no access code, so anyone who can reach it could use it. Set one: "
                     f"{ACCESS_CODE_ENV}=... in the environment, or access_code = \"...\" in "
                     ".streamlit/secrets.toml; or listen on localhost only (server.address = \"localhost\").")
            st.stop()
        return
    granted = hashlib.sha256(code.encode()).hexdigest()  # changing the code ends every session
    state = st.session_state
    if state.get("access_granted") != granted or not isinstance(state.get("space"), spaces.Space):
        returning = spaces.identity_from_token(st.query_params.get(IDENTITY_PARAM, ""), code)
        if returning is None or not returning.data_workspace.is_dir():
            _sign_in_form(code, granted)
        _enter(returning, code, granted, rerun=False)
    token = state.identity
    if st.query_params.get(IDENTITY_PARAM) != token:
        st.query_params[IDENTITY_PARAM] = token  # kept through page changes, so a reload keeps the user


def _sign_in_form(code: str, granted: str) -> None:
    """The access code and a name; stops the page until they are right."""
    st.title("Transfer Learning Studio")
    with st.form("access_form"):
        given = st.text_input("Access code", type="password", key="access_code_given",
                              help="Your teacher or the person who runs this server gives it.")
        name = st.text_input("Your name", key="user_name_given", max_chars=24,
                             help="Your datasets and runs are kept under it; leave it empty to be given one.")
        entered = st.form_submit_button("Enter", type="primary")
    if entered:
        digest = hashlib.sha256(given.strip().encode()).hexdigest()
        teacher = teacher_code()
        if teacher and hmac.compare_digest(digest, hashlib.sha256(teacher.encode()).hexdigest()):
            space = spaces.Space(workspace_root(), spaces.TEACHER, teacher=True)
            space.data_workspace.mkdir(parents=True, exist_ok=True)
            _enter(space, code, granted)
        if hmac.compare_digest(digest, granted):
            try:
                space = spaces.claim_name(name) if name.strip() else spaces.given_name()
            except ValueError as error:
                st.error(literal(error))
                st.stop()
            _enter(space, code, granted)
        time.sleep(1.0)  # slows down guessing
        st.error("That is not the access code.")
    st.stop()


def _enter(space: spaces.Space, code: str, granted: str, rerun: bool = True) -> None:
    state = st.session_state
    state.access_granted, state.space = granted, space
    state.identity = spaces.identity_token(space.user, code, teacher=space.teacher)
    st.query_params[IDENTITY_PARAM] = state.identity
    if rerun:
        st.rerun()


def space() -> spaces.Space:
    """What this visitor owns and sees: their own space on a classroom server, everything on a laptop."""
    found = st.session_state.get("space")
    if not access_code():
        return spaces.Space.laptop()
    # a classroom session that has not signed in (a page run on its own) owns and sees nothing
    return found if isinstance(found, spaces.Space) else spaces.Space(workspace_root(), spaces.NOBODY)
