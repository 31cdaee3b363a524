"""Who is signed in on a classroom server: the server secret and the session records behind sign-in links.

A sign-in link carries a random session id (`?me=...`), never the name or anything derived from a code.
The record behind it lives in the workspace (`users/.sessions/<sha256 of the id>.json`, mode 0600) and says
whose it is, when it ends, which browsers have given the access code for it, and a keyed digest of the code it
was made with (the teacher code for the teacher, the access code for a student): a record whose code changed
since is refused and deleted, so changing the teacher code signs the teacher out, and changing the access
code signs every student out. The teacher can end a student's records (sign them out) or replace them by a
fresh one (a new link: the old one stops working).

A record proves nothing on its own in a new browser: the browser must also show a key it was given when it
gave the access code (a cookie), else the code is asked again. So an address seen on a projector or in a
shared browser's history gives, to someone who also knows the class's access code, that account until the
record expires (default a school day, $TL_STUDIO_SESSION_HOURS) or the teacher signs the student out.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from tl_core.ops.storage import atomic_write_json, workspace_root

SESSION_HOURS_ENV = "TL_STUDIO_SESSION_HOURS"
SECRET_BYTES = 32
_SECRET_FILE = ".secret"
_SESSIONS_DIR = ".sessions"
_MAX_BROWSERS = 8  # browsers one link may be opened in (a student's laptop, the lab's, a phone...)


class SecretError(RuntimeError):
    """The server secret is missing, short or unreadable: nothing can be signed safely, so the app stops."""


def session_hours() -> float:
    """How long a sign-in lasts: $TL_STUDIO_SESSION_HOURS, else 8 (a school day)."""
    try:
        hours = float(os.environ.get(SESSION_HOURS_ENV, "8"))
    except ValueError:
        return 8.0
    return hours if 0 < hours <= 24 * 31 else 8.0


def _users(workspace: Path | None) -> Path:
    return Path(workspace or workspace_root()) / "users"


# ---------------------------------------------------------------- the secret

def server_secret(workspace: Path | None = None) -> bytes:
    """The workspace's random key (users/.secret, 0600): made once, atomically; checked at every call.

    Made in a temporary file, flushed to disk, then linked into place, so a crash or a full disk never leaves a
    short key behind; a key that is not exactly SECRET_BYTES long raises SecretError (never used)."""
    path = _users(workspace) / _SECRET_FILE
    if not path.exists():
        _make_secret(path)
    try:
        key = path.read_bytes()
    except OSError as error:
        raise SecretError(f"{path}: the server secret cannot be read ({error.strerror})") from None
    if len(key) != SECRET_BYTES:
        raise SecretError(f"{path}: the server secret is {len(key)} bytes long, not {SECRET_BYTES}; it is damaged. "
                          "Delete the file and start the server again (everyone signs in again).")
    return key


def _make_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".secret.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:  # link, not rename: of two servers starting at once, the first key wins and the second is dropped
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keyed_digest(text: str, workspace: Path | None = None) -> str:
    """HMAC-SHA256 of `text` under the server secret (a code is never stored, even hashed without a key)."""
    return hmac.new(server_secret(workspace), text.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- session records

@dataclass
class Session:
    """One sign-in: whose it is, until when, and which browsers may use it without giving the code again."""

    token: str
    user: str
    teacher: bool
    expires: float
    browsers: list[str] = field(default_factory=list)  # keyed digests of the browser keys (cookies)


def _record_path(token: str, workspace: Path | None) -> Path:
    return _users(workspace) / _SESSIONS_DIR / (hashlib.sha256(str(token).encode()).hexdigest() + ".json")


def _code_digest(teacher: bool, code: str, workspace: Path | None) -> str:
    return keyed_digest(f"{'teacher' if teacher else 'student'}\n{code}", workspace)


def create_session(user: str, code: str, teacher: bool = False, browser_key: str | None = None,
                   workspace: Path | None = None) -> Session:
    """A new sign-in for `user`, tied to `code` (the teacher code for the teacher, else the access code)."""
    _drop_expired(workspace)
    token = secrets.token_urlsafe(24)
    session = Session(token, user, teacher, time.time() + session_hours() * 3600,
                      [keyed_digest(browser_key, workspace)] if browser_key else [])
    _write(session, code, workspace)
    return session


def _drop_expired(workspace: Path | None) -> None:
    """Delete the records whose time is over (they would be refused anyway), so the folder does not grow."""
    folder = _users(workspace) / _SESSIONS_DIR
    now = time.time()
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            expired = float(json.loads(path.read_text()).get("expires", 0)) <= now
        except (OSError, ValueError, AttributeError, TypeError):
            expired = False  # being written, or damaged: find_session refuses a damaged one
        if expired:
            path.unlink(missing_ok=True)


def _write(session: Session, code: str, workspace: Path | None) -> None:
    path = _record_path(session.token, workspace)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(path, {"user": session.user, "teacher": session.teacher, "expires": session.expires,
                             "browsers": session.browsers[-_MAX_BROWSERS:],
                             "code": _code_digest(session.teacher, code, workspace)})


def find_session(token: str, codes: dict[bool, str | None], workspace: Path | None = None) -> Session | None:
    """The live session a link's token names, or None: unknown, expired, or made with a code that changed.

    `codes` maps teacher (True/False) to the current code of that role; a role without a code has no sessions.
    Expired and outdated records are deleted as they are found."""
    token = str(token or "")
    if not token or len(token) > 64:
        return None
    path = _record_path(token, workspace)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "user" not in record:
        path.unlink(missing_ok=True)
        return None
    teacher = bool(record.get("teacher"))
    code = codes.get(teacher)
    if (not code or float(record.get("expires", 0)) <= time.time()
            or not hmac.compare_digest(str(record.get("code", "")), _code_digest(teacher, code, workspace))):
        path.unlink(missing_ok=True)
        return None
    return Session(token, str(record["user"]), teacher, float(record["expires"]), list(record.get("browsers", [])))


def knows_browser(session: Session, browser_key: str | None, workspace: Path | None = None) -> bool:
    """Whether this browser gave the access code for this sign-in before (its cookie's key is in the record)."""
    if not browser_key:
        return False
    digest = keyed_digest(browser_key, workspace)
    return any(hmac.compare_digest(digest, known) for known in session.browsers)


def add_browser(session: Session, browser_key: str, code: str, workspace: Path | None = None) -> None:
    """Remember a browser that has just given the access code for this sign-in."""
    digest = keyed_digest(browser_key, workspace)
    if digest not in session.browsers:
        session.browsers.append(digest)
    _write(session, code, workspace)


def forget_browser(session: Session, browser_key: str | None, code: str, workspace: Path | None = None) -> None:
    """Sign out in this browser: it must give the access code again to use the link."""
    if browser_key:
        digest = keyed_digest(browser_key, workspace)
        session.browsers = [known for known in session.browsers if not hmac.compare_digest(known, digest)]
        _write(session, code, workspace)


def sessions_of(user: str, workspace: Path | None = None) -> list[Path]:
    """The record files of one user's sign-ins (every browser, every link)."""
    folder = _users(workspace) / _SESSIONS_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("user") == user and not record.get("teacher"):
            found.append(path)
    return found


def sign_out_user(user: str, workspace: Path | None = None) -> int:
    """End every sign-in of a student (their links stop working at their next click); how many ended."""
    ended = sessions_of(user, workspace)
    for path in ended:
        path.unlink(missing_ok=True)
    return len(ended)


def fresh_link(user: str, code: str, workspace: Path | None = None) -> Session:
    """Replace a student's sign-ins by one new one (the old links stop working); its browser must give the
    access code once."""
    sign_out_user(user, workspace)
    return create_session(user, code, workspace=workspace)
