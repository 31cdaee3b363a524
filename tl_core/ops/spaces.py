"""Per-user spaces on a shared server (a classroom): who a visitor is, and what is theirs.

On a laptop there is one user and no name: `Space.laptop()` owns and sees everything, as before.
On a classroom server (an access code is set) each visitor has a name:
- their datasets live in `<workspace>/users/<name>/datasets/`, so listing, reusing and deleting
  another user's dataset is impossible by construction;
- their runs live in the one `<workspace>/runs/` (one queue, one set of device slots for the server)
  and carry an `owner.json`; a student sees and touches only runs whose owner is them, whatever id
  they guess; the teacher sees every run and may cancel any.
- who they are survives a reload: `identity_token` signs the name with a server secret (and the
  access code, so a new code ends every session), and the app keeps the token in the page's address;
- what they chose (backbone, dataset, plan, settings, the run they watch) is kept in their
  `state.json` and restored after a reload or a reconnect.
Ownership is enforced here, in the engine, not only hidden in the UI.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .runs import (RunFolder, delete_run, list_runs, read_config_record, read_owner, read_status, request_stop,
                   runs_root)
from .storage import atomic_write_json, read_json, workspace_root

TEACHER = "teacher"
NOBODY = "-nobody"  # no claimable name starts with '-': a space that owns nothing
MAX_QUEUED_ENV = "TL_STUDIO_MAX_QUEUED"
_NAME = re.compile(r"^[\w][\w \-]{0,23}$")
_SECRET_FILE = ".secret"
_LAPTOP_STATE = "session.json"


class NotYours(PermissionError):
    """The run or dataset is not this user's, or does not exist: the same words either way, so guessing
    an id tells nothing."""


def users_root(workspace: Path | None = None) -> Path:
    return Path(workspace or workspace_root()) / "users"


def clean_name(name: str) -> str:
    """A user's name as given, checked: 1 to 24 letters, digits, spaces, '-' or '_', starting with a letter or
    digit; ValueError saying so otherwise."""
    name = " ".join(str(name).split())
    if not _NAME.match(name) or name.lower() == TEACHER:
        raise ValueError(f"{name[:40]!r}: not a name this class can use; use 1 to 24 letters, digits, spaces, "
                         "'-' or '_' (and not 'teacher')")
    return name


def max_queued() -> int:
    """Runs one user may have waiting or training at once: $TL_STUDIO_MAX_QUEUED, else 2."""
    try:
        return max(1, int(os.environ.get(MAX_QUEUED_ENV, "2")))
    except ValueError:
        return 2


# ---------------------------------------------------------------- identity

def _server_secret(workspace: Path | None = None) -> bytes:
    """A random key made once per workspace (mode 0600); signs identity tokens."""
    path = users_root(workspace) / _SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def _signature(role: str, name: str, access_code: str, workspace: Path | None) -> str:
    message = f"{role}\n{name}\n{hashlib.sha256(access_code.encode()).hexdigest()}".encode()
    return hmac.new(_server_secret(workspace), message, hashlib.sha256).hexdigest()[:32]


def identity_token(name: str, access_code: str, teacher: bool = False, workspace: Path | None = None) -> str:
    """'name.role.signature': kept in the page's address, so a reload finds the same user again."""
    role = TEACHER if teacher else "student"
    return f"{name}.{role}.{_signature(role, name, access_code, workspace)}"


def identity_from_token(token: str, access_code: str, workspace: Path | None = None) -> Space | None:
    """The Space a token proves, or None (forged, from another access code, or malformed)."""
    try:
        name, role, signature = str(token).rsplit(".", 2)
    except ValueError:
        return None
    if role not in (TEACHER, "student") or not hmac.compare_digest(
            signature, _signature(role, name, access_code, workspace)):
        return None
    return Space(Path(workspace or workspace_root()), name, teacher=role == TEACHER)


def claim_name(name: str, workspace: Path | None = None) -> Space:
    """Make the space of a new user; ValueError when the name is taken (its owner comes back by their link)."""
    name = clean_name(name)
    home = users_root(workspace) / name
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir()
    except FileExistsError:
        raise ValueError(f"{name!r} is already someone's name in this class: choose another one. If it is yours, "
                         "open the address your browser showed you before (it carries your name).") from None
    return Space(Path(workspace or workspace_root()), name)


def given_name(workspace: Path | None = None) -> Space:
    """A new user who gave no name gets one: 'student-7f3a'."""
    while True:
        try:
            return claim_name(f"student-{secrets.token_hex(2)}", workspace)
        except ValueError:
            continue


# ---------------------------------------------------------------- what belongs to whom

@dataclass(frozen=True)
class Space:
    """What one visitor may see and touch. `user` None: the laptop's single user, who owns everything."""

    workspace: Path
    user: str | None = None
    teacher: bool = False

    @classmethod
    def laptop(cls, workspace: Path | None = None) -> Space:
        return cls(Path(workspace or workspace_root()))

    @property
    def owner(self) -> str | None:
        """The name written into a run this user starts (None on a laptop)."""
        return None if self.user is None else (TEACHER if self.teacher else self.user)

    @property
    def data_workspace(self) -> Path:
        """Where this user's datasets live: pass it as `workspace` to the datasets functions."""
        return self.workspace if self.user is None else users_root(self.workspace) / self.owner

    @property
    def state_file(self) -> Path:
        return (self.workspace / _LAPTOP_STATE if self.user is None
                else users_root(self.workspace) / self.owner / "state.json")

    # ---- runs
    def owns_run(self, run_dir: str | Path) -> bool:
        """Whether the run is this user's own (the laptop's user owns every run)."""
        return self.user is None or read_owner(Path(run_dir)) == self.owner

    def may_see_run(self, run_dir: str | Path) -> bool:
        return self.teacher or self.owns_run(run_dir)

    def my_runs(self) -> list[Path]:
        """This user's own runs, newest first: what their pages show as theirs."""
        return [p for p in list_runs(self.workspace) if self.owns_run(p)]

    def visible_runs(self) -> list[Path]:
        """The runs this user may look at: their own; every run for the teacher."""
        return [p for p in list_runs(self.workspace) if self.may_see_run(p)]

    def run(self, run: str | Path) -> Path:
        """A run folder by id or path, checked: inside this workspace's runs and visible to this user."""
        root = runs_root(self.workspace).resolve()
        candidate = (root / Path(str(run)).name).resolve()
        if (candidate.parent != root or Path(str(run)).name in ("", ".", "..")
                or not RunFolder(candidate).config.is_file() or not self.may_see_run(candidate)):
            raise NotYours(f"{Path(str(run)).name}: no run of yours has this id")
        return candidate

    def cancel_run(self, run: str | Path) -> None:
        """Stop (or unqueue) a run: the owner's, or any for the teacher."""
        request_stop(self.run(run))

    def delete_run(self, run: str | Path) -> None:
        """Delete one of this user's own runs (the teacher may delete any)."""
        run_dir = self.run(run)
        if not (self.teacher or self.owns_run(run_dir)):
            raise NotYours(f"{run_dir.name}: no run of yours has this id")
        delete_run(run_dir)

    def active_runs(self) -> list[Path]:
        """This user's runs still queued or training."""
        return [p for p in self.my_runs() if read_status(p).get("state") in ("queued", "running")]

    # ---- datasets
    def owns_dataset(self, root: str | Path | None) -> bool:
        """Whether a dataset folder is this user's (inside their data workspace); the teacher may use any."""
        if root is None:
            return True
        if self.user is None:
            return True
        root = Path(root).resolve()
        allowed = [self.data_workspace / "datasets"] + ([users_root(self.workspace)] if self.teacher else [])
        return any(root.is_relative_to(place.resolve()) for place in allowed)

    def delete_dataset(self, root: str | Path) -> None:
        """Remove one of this user's datasets; refused while one of their runs waits for it or trains on it."""
        root = Path(root).resolve()
        if not self.owns_dataset(root) or not (root / "manifest.json").is_file() \
                or root.parent != (self.data_workspace / "datasets").resolve():
            raise NotYours(f"{root.name}: no dataset of yours has this id")
        for run_dir in self.active_runs():
            config = (read_config_record(run_dir).get("config") or {})
            if root in {Path(str(config.get(key) or "")).resolve() for key in ("dataset_dir", "val_dataset_dir")}:
                raise ValueError(f"run {run_dir.name} is waiting for or training on this dataset: "
                                 "stop it first, or let it end, then delete the dataset")
        shutil.rmtree(root)

    # ---- the session's choices
    def load_state(self) -> dict:
        """The choices this user made last time ({} when none, or the file is damaged)."""
        try:
            state = read_json(self.state_file, {})
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self, state: dict) -> None:
        atomic_write_json(self.state_file, state)

    def check_restored(self, state: dict) -> dict:
        """The saved choices that still hold and are this user's: a dataset or run of someone else, or one
        deleted since, is dropped."""
        kept = dict(state)
        for key in ("dataset_dir", "val_dataset_dir"):
            root = kept.get(key)
            if root and not (self.owns_dataset(root) and (Path(root) / "manifest.json").is_file()):
                kept[key] = None
        run_dir = kept.get("run_dir")
        if run_dir:
            try:
                kept["run_dir"] = str(self.run(run_dir))
            except NotYours:
                kept["run_dir"] = None
        return kept


class UserQueue:
    """The server's job queue as one user sees it: their runs carry their name and count against their limit;
    they may cancel only their own (the teacher, any). Everything else is the queue's own."""

    def __init__(self, queue, space: Space):
        self.queue, self.space = queue, space

    def submit(self, config):
        space = self.space
        for root in (config.dataset_dir, config.val_dataset_dir):
            if not space.owns_dataset(root):
                raise NotYours(f"{Path(str(root)).name}: no dataset of yours has this id")
        if space.user is None:
            return self.queue.submit(config)
        waiting = len(space.active_runs())
        if not space.teacher and waiting >= max_queued():
            raise ValueError(f"you already have {waiting} runs waiting or training (at most {max_queued()} at once "
                             "in this class): wait for one to end, or stop one, then start this one")
        return self.queue.submit(config, owner=space.owner)

    def cancel(self, run_dir) -> None:
        self.queue.cancel(self.space.run(run_dir))

    def __getattr__(self, name):
        return getattr(self.queue, name)
