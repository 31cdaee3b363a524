"""The classroom gate: the access code, who the visitor is, and what they own (their space).

app.py calls require_access_code() before st.navigation, so no page code runs before it; every page file
calls enter_page() on its first line as well, because Streamlit can still run a page file without app.py:
while a `pages/` folder sits beside the entry script, Streamlit (1.67: `PagesManager.uses_pages_directory`,
true at every server start, cleared only by a call to st.navigation) runs a deep link such as /Data as
`pages/2_Data.py` alone until some session reaches st.navigation. enter_page() gates such a run and then
switches the server to the router for good, so every later run of every session goes through app.py.

On a laptop (no access code) everyone owns everything; on a shared server each signed-in user has their own
space (tl_core.ops.spaces) and a sign-in record (tl_core.ops.identities) named by the link in the address bar and
bound to the browsers that gave the code (a cookie).
"""
from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager

import streamlit as st

from pages.ui.text import literal
from tl_core.ops import attempts
from tl_core.ops import identities
from tl_core.ops import spaces
from tl_core.ops.filecache import folder_stamp, keyed_on
from tl_core.ops.storage import human_bytes, workspace_root

ACCESS_CODE_ENV = "TL_STUDIO_ACCESS_CODE"
TEACHER_CODE_ENV = "TL_STUDIO_TEACHER_CODE"
IDENTITY_PARAM = "me"  # the page address carries the sign-in link's id, so a reload finds the same user
BROWSER_COOKIE = "tl_studio_browser"  # this browser's key: a link works without the code only where it was given
_KEY = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
_LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")
LOG = logging.getLogger("tl_studio.gate")
# Another site could show this app in a frame and trick a visitor into clicks (Streamlit sends no
# X-Frame-Options header): framed by anyone, the page hides itself.
_FRAME_GUARD = ("<script>if (window.top !== window.self) { document.documentElement.style.display = 'none'; }"
                "</script>")
_router = threading.local()  # set while app.py runs the chosen page (the script thread runs both)
_signed_sessions: set[str] = set()  # ids of this process's Streamlit sessions that passed the gate


def harden_process() -> None:
    """Files the server makes are its own: 0600 files, 0700 folders (datasets, runs, state, the secret)."""
    os.umask(0o077)


def frame_guard() -> None:
    st.sidebar.html(_FRAME_GUARD, unsafe_allow_javascript=True)


# ---------------------------------------------------------------- the router

def leave_folder_mode() -> bool:
    """Turn off Streamlit's folder mode (what st.navigation does), so every later script run of every session
    starts at app.py; True when it was on, i.e. Streamlit ran a page file directly."""
    from streamlit.runtime.pages_manager import PagesManager

    was_on = bool(getattr(PagesManager, "uses_pages_directory", False))
    PagesManager.uses_pages_directory = False
    return was_on and PagesManager.uses_pages_directory is False


@contextmanager
def routed():
    """app.py runs the chosen page inside this block: the page's enter_page() then knows the gate ran."""
    _router.active = True
    try:
        yield
    finally:
        _router.active = False


def enter_page() -> None:
    """The first line of every page file: nothing of the page runs before the gate.

    Through app.py this returns at once. Run by Streamlit's folder mode (before any session reached
    st.navigation), it turns that mode off and starts the run again, through app.py. Run alone any other way
    (a test driving the file), the gate runs here."""
    if getattr(_router, "active", False):
        return
    if leave_folder_mode():
        st.rerun()  # before anything is drawn: the run starts again at app.py, whose gate asks for the code
    require_access_code()  # run alone some other way: the gate, here


# ---------------------------------------------------------------- codes

def access_code() -> str | None:
    """The access code of a shared server: $TL_STUDIO_ACCESS_CODE, else `access_code` in Streamlit secrets."""
    return _setting(ACCESS_CODE_ENV, "access_code")


def teacher_code() -> str | None:
    """The teacher's code on a classroom server: $TL_STUDIO_TEACHER_CODE, else `teacher_code` in secrets."""
    return _setting(TEACHER_CODE_ENV, "teacher_code")


def _codes() -> dict[bool, str | None]:
    return {False: access_code(), True: teacher_code()}


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


def client_address() -> str:
    """The visitor's address as the server sees it (a proxy in front: its own; see README). Streamlit gives
    None for a visitor on this machine (127.0.0.1 or ::1): they count as one address, 'localhost'."""
    try:
        address = st.context.ip_address
    except Exception:  # no server (tests)
        return "localhost"
    return address if isinstance(address, str) and address else "localhost"


def _browser_key() -> str | None:
    try:
        key = st.context.cookies.get(BROWSER_COOKIE)
    except Exception:  # no server (tests)
        return None
    return key if isinstance(key, str) and _KEY.match(key) else None


# ---------------------------------------------------------------- the gate

def require_access_code() -> None:
    """Before any page renders: ask for the access code when one is set; refuse to serve the network without one.

    Run on every script run: a sign-in that expired, was signed out by the teacher, or whose code changed
    ends at the visitor's next click."""
    code = access_code()
    if code is None:
        if listens_on_network():
            st.error(f"This server listens on the network ({st.get_option('server.address') or 'every address'}) "
                     f"but has no access code, so anyone who can reach it could use it. Set one: "
                     f"{ACCESS_CODE_ENV}=... in the environment, or access_code = \"...\" in "
                     ".streamlit/secrets.toml; or listen on localhost only (server.address = \"localhost\").")
            st.stop()
        return
    try:
        identities.server_secret()  # a short or unreadable key would let anyone mint a sign-in: stop here
    except identities.SecretError as error:
        LOG.error("%s", error)
        st.error(f"This server cannot sign anyone in: {literal(error)}")
        st.stop()
    state = st.session_state
    session = identities.find_session(state.get("identity", ""), _codes())
    if session is None or not _home_of(session).is_dir():
        _forget_sign_in()
        _signed_sessions.discard(_session_id())
        link = identities.find_session(st.query_params.get(IDENTITY_PARAM, ""), _codes())
        if link is not None and _home_of(link).is_dir() and identities.knows_browser(link, _browser_key()):
            _enter(link, rerun=False)  # a reload, or a new tab, of a browser that gave the code for this link
        else:
            _sign_in_form(link)
    if st.query_params.get(IDENTITY_PARAM) != state.identity:
        st.query_params[IDENTITY_PARAM] = state.identity  # kept through page changes, so a reload keeps the user
    _set_browser_cookie(state.browser_key)
    _signed_sessions.add(_session_id())


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def refuse_uploads_before_sign_in() -> None:
    """Once per server process, on a classroom server: Streamlit's upload endpoint (/_stcore/upload_file) keeps a
    file only for a session that passed the gate; any other gets 403 and nothing is kept.

    Streamlit itself accepts a file for any live session (it checks the session id and the XSRF token): a
    visitor who never gave the code could fill the server's memory. Its file manager is the one place every
    upload goes through, so the check wraps it."""
    if access_code() is None or st.get_option("global.appTest"):
        return
    try:
        from streamlit import runtime

        manager = runtime.get_instance().uploaded_file_mgr
    except Exception:  # no server runtime (tests): nothing to guard
        return
    if getattr(manager, "_tl_gate_guarded", False):
        return
    from starlette.exceptions import HTTPException

    add_file = manager.add_file

    def add_file_if_signed_in(session_id, file):
        if session_id not in _signed_sessions:
            LOG.warning("upload refused: session %s has not given the access code", str(session_id)[:8])
            raise HTTPException(status_code=403, detail="sign in first")
        add_file(session_id, file)

    manager.add_file = add_file_if_signed_in
    manager._tl_gate_guarded = True


def _home_of(session: identities.Session):
    return _space_of(session).data_workspace


def _space_of(session: identities.Session) -> spaces.Space:
    return spaces.Space(workspace_root(), spaces.TEACHER if session.teacher else session.user, teacher=session.teacher)


def _forget_sign_in() -> None:
    for key in ("identity", "space", "access_granted"):
        st.session_state.pop(key, None)


def _sign_in_form(link: identities.Session | None) -> None:
    """The access code (and a name, unless the address is a sign-in link); stops the page until they are right."""
    _remember_asked_page()
    st.title("Transfer Learning Studio")
    if link is not None:
        st.info("This is a sign-in link, opened in a browser that has not used it before: give the "
                + ("teacher code" if link.teacher else "access code") + " to continue.")
    with st.form("access_form"):
        if link is None:  # said on the form, not only behind the help icon: a teacher looks for their own box
            st.caption("Teacher? Your teacher code goes in the Access code box; leave the name empty.")
        given = st.text_input("Access code", type="password", key="access_code_given",
                              help="Your teacher or the person who runs this server gives it. "
                                   "Teachers: your teacher code goes here.")
        name = "" if link else st.text_input(
            "Your name", key="user_name_given", max_chars=24,
            help="Your datasets and runs are kept under it; leave it empty to be given one.")
        entered = st.form_submit_button("Enter", type="primary")
    if entered:
        _check_code(given.strip(), name or "", link)
    st.stop()


def _remember_asked_page() -> None:
    """The page the visitor's address asked for (a deep link such as /Data): shown once they are in."""
    url = st.context.url
    if isinstance(url, str) and url:
        st.session_state.gate_asked_page = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def go_to_asked_page(pages: list, current) -> None:
    """After st.navigation: a visitor who just signed in on a deep link goes to that page, if it is theirs."""
    asked = st.session_state.pop("gate_asked_page", None)
    for page in pages:
        if asked and page.url_path == asked and page.url_path != current.url_path:
            st.switch_page(page)


def _matches(given: str, code: str | None) -> bool:
    return bool(code) and hmac.compare_digest(given.encode(), code.encode())


def _check_code(given: str, name: str, link: identities.Session | None) -> None:
    address = client_address()
    teacher_given = _matches(given, teacher_code())
    student_given = _matches(given, access_code())
    right = (teacher_given if link.teacher else student_given) if link else (teacher_given or student_given)
    try:
        if not attempts.judge_code(address, right):
            st.error("That is not the access code.")
            return
        key = _browser_key() or secrets.token_urlsafe(24)
        if link is not None:
            identities.add_browser(link, key, teacher_code() if link.teacher else access_code())
            _enter(link, browser_key=key)
        if teacher_given:
            teacher = spaces.Space(workspace_root(), spaces.TEACHER, teacher=True)
            teacher.data_workspace.mkdir(parents=True, exist_ok=True)
            _enter(identities.create_session(spaces.TEACHER, teacher_code(), teacher=True, browser_key=key),
                   browser_key=key)
        attempts.take_new_name(address)
        space = spaces.claim_name(name) if name.strip() else spaces.given_name()
        LOG.info("new name %r from %s", space.user, address)
        _enter(identities.create_session(space.user, access_code(), browser_key=key), browser_key=key)
    except (attempts.LockedOut, ValueError) as error:
        st.error(literal(error))


def _enter(session: identities.Session, rerun: bool = True, browser_key: str | None = None) -> None:
    state = st.session_state
    state.identity, state.space = session.token, _space_of(session)
    state.browser_key = browser_key or _browser_key()
    st.query_params[IDENTITY_PARAM] = session.token
    if rerun:
        st.rerun()


def _set_browser_cookie(key: str | None) -> None:
    """Give this browser its key (a cookie the server reads when the next tab or reload connects)."""
    if not key or not _KEY.match(key) or _browser_key() == key:
        return
    max_age = int(identities.session_hours() * 3600)
    st.sidebar.html(f"<script>document.cookie = '{BROWSER_COOKIE}={key}; path=/; max-age={max_age}; SameSite=Strict'"
                    " + (location.protocol === 'https:' ? '; Secure' : '');</script>", unsafe_allow_javascript=True)


def sign_out_control() -> None:
    """The sidebar's "Sign out": this browser must give the code again; the link still works elsewhere."""
    state = st.session_state
    if access_code() is None or not state.get("identity"):
        return
    if st.sidebar.button("Sign out", key="gate_sign_out", icon=":material/logout:"):
        session = identities.find_session(state.identity, _codes())
        if session is not None:
            identities.forget_browser(session, state.get("browser_key") or _browser_key(),
                                      teacher_code() if session.teacher else access_code())
        _forget_sign_in()
        _signed_sessions.discard(_session_id())
        st.query_params.clear()
        st.rerun()


# ---------------------------------------------------------------- the teacher's actions

def students() -> list[str]:
    """The names of this class's students (their folders), sorted."""
    root = spaces.users_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name != spaces.TEACHER) if root.is_dir() else []


def sign_out_student(name: str) -> int:
    """The teacher ends every sign-in of one student; how many ended."""
    if not space().teacher:
        raise PermissionError("only the teacher may sign a student out")
    ended = identities.sign_out_user(name)
    LOG.info("teacher signed %r out (%d sign-ins)", name, ended)
    return ended


def fresh_link(name: str) -> str:
    """The teacher gives a student a new sign-in link (the old ones stop working): the address to hand over."""
    if not space().teacher or name not in students():
        raise PermissionError("only the teacher may give a sign-in link, to a student of this class")
    session = identities.fresh_link(name, access_code())
    url = st.context.url
    base = re.sub(r"/Class/?$", "", (url if isinstance(url, str) else "").split("?")[0])  # the app's root, not this page's
    return f"{base.rstrip('/')}/?{IDENTITY_PARAM}={session.token}"


def teacher_actions() -> None:
    """On the Class page: sign one student out, or give them a fresh sign-in link (the old ones stop working)."""
    names = students()
    if not space().teacher or not names:
        return
    with st.expander("Students' sign-ins: a student who lost their address gets a new link here",
                     icon=":material/key:"):
        name = st.selectbox("Student", names, key="class_student")
        out_col, link_col = st.columns(2)
        if out_col.button("Sign this student out", key="class_sign_out", icon=":material/logout:"):
            st.session_state.pop("class_link", None)
            st.text(f"{name}: {sign_out_student(name)} sign-in(s) ended; their links no longer work.")
        if link_col.button("Give a new sign-in link", key="class_fresh_link", icon=":material/link:"):
            st.session_state.class_link = (name, fresh_link(name))
        if shown := st.session_state.get("class_link"):
            st.text(f"The new sign-in link of {shown[0]} (their old links no longer work; in a new browser it "
                    "asks for the access code):")
            st.code(shown[1], language=None)


# ---------------------------------------------------------------- quotas

def _incoming_bytes(value) -> int:
    """About how many bytes an ingest argument brings: uploaded bytes, (name, bytes, ...) tuples, a folder."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_incoming_bytes(item) for item in value)
    if isinstance(value, (str, os.PathLike)) and os.path.isdir(value):
        return spaces.tree_bytes(value)
    return 0


def check_room(*ingest_args) -> None:
    """Before an ingest: QuotaExceeded (a ValueError naming the limit) when it would pass this user's limits."""
    space().check_room(sum(_incoming_bytes(arg) for arg in ingest_args), new_dataset=True)


USAGE_REFRESH_S = 30


# The line walks the user's whole folder and runs (a few ms a rerun, at every rerun of the Data page): read again
# when a dataset comes or goes, else every USAGE_REFRESH_S. Checks before an ingest (check_room) always walk it.
@keyed_on(lambda mine: (folder_stamp(mine.data_workspace / "datasets"), int(time.monotonic() // USAGE_REFRESH_S)))
def _shown_usage(mine: spaces.Space) -> tuple[int, int]:
    return mine.usage()


def quota_caption() -> None:
    """The Data page's line: how much of their disk and dataset limits a classroom student uses."""
    mine = space()
    if mine.user is None or mine.teacher or mine.user == spaces.NOBODY:
        return
    used, count = _shown_usage(mine)
    st.caption(f"Your space: {human_bytes(used)} of {human_bytes(spaces.quota_bytes())}, "
               f"{count} of {spaces.max_datasets()} datasets.")


def space() -> spaces.Space:
    """What this visitor owns and sees: their own space on a classroom server, everything on a laptop."""
    found = st.session_state.get("space")
    if not access_code():
        return spaces.Space.laptop()
    # a classroom session that has not signed in (a page run on its own) owns and sees nothing
    return found if isinstance(found, spaces.Space) else spaces.Space(workspace_root(), spaces.NOBODY)
