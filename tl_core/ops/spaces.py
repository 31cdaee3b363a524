"""Per-user spaces on a shared server (a classroom): who a visitor is, and what is theirs.

On a laptop there is one user and no name: `Space.laptop()` owns and sees everything, as before.
On a classroom server (an access code is set) each visitor has a name:
- their datasets live in `<workspace>/users/<name>/datasets/`, so listing, reusing and deleting
  another user's dataset is impossible by construction;
- their runs live in the one `<workspace>/runs/` (one queue, one set of device slots for the server)
  and carry an `owner.json`; a student sees and touches only runs whose owner is them, whatever id
  they guess; the teacher sees every run and may cancel any.
- who they are survives a reload through a sign-in record (tl_core.identities), whose id the page's
  address carries;
- what one user may take is bounded: runs waiting at once (under a per-user file lock, so parallel tabs
  cannot beat it), disk and dataset count (`Space.check_room`);
- names are NFKC-normalised and a look-alike of a name already taken (full-width letters, Cyrillic or
  Greek letters that look Latin, 'rn' for 'm', '1' for 'l') is refused: the skeleton map below;
- what they chose (backbone, dataset, plan, settings, the run they watch) is kept in their
  `state.json` and restored after a reload or a reconnect.
Ownership is enforced here, in the engine, not only hidden in the UI.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .runs import (RunFolder, delete_run, list_runs, read_config_record, read_owner, read_status, request_stop,
                   runs_root)
from .storage import atomic_write_json, human_bytes, read_json, workspace_root

TEACHER = "teacher"
NOBODY = "-nobody"  # no claimable name starts with '-': a space that owns nothing
MAX_QUEUED_ENV = "TL_STUDIO_MAX_QUEUED"
QUOTA_MB_ENV = "TL_STUDIO_QUOTA_MB"
MAX_DATASETS_ENV = "TL_STUDIO_MAX_DATASETS"
_NAME = re.compile(r"^[\w][\w \-]{0,23}$")
_LAPTOP_STATE = "session.json"
_GIVEN_NAME_TRIES = 50  # 'student-' + 6 hex digits: 16 million names; 50 misses in a row means something is wrong
# Letters of other scripts that look like Latin ones, and Latin sequences that look like others (after NFKC
# and casefold): a small part of Unicode's confusables (TR39) that covers what a class can type. Two names
# with the same skeleton look alike, and the second is refused.
_SKELETON = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ь": "b", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h",
    "ӏ": "l", "ԛ": "q", "ԝ": "w", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "0": "o", "1": "l", "|": "l", "_": "-",
    " ": "-",
})


class NotYours(PermissionError):
    """The run or dataset is not this user's, or does not exist: the same words either way, so guessing
    an id tells nothing."""


def users_root(workspace: Path | None = None) -> Path:
    return Path(workspace or workspace_root()) / "users"


def clean_name(name: str) -> str:
    """A user's name, NFKC-normalised and checked: 1 to 24 letters, digits, spaces, '-' or '_', starting with a
    letter or digit, and not a look-alike of 'teacher'; ValueError saying so otherwise."""
    name = " ".join(unicodedata.normalize("NFKC", str(name)[:200]).split())
    if not _NAME.match(name) or name_skeleton(name) == name_skeleton(TEACHER):
        raise ValueError(f"{name[:40]!r}: not a name this class can use; use 1 to 24 letters, digits, spaces, "
                         "'-' or '_' (and not 'teacher')")
    return name


def name_skeleton(name: str) -> str:
    """What a name looks like: NFKC, casefolded, look-alike letters mapped to one ('Аlice' and 'alice' agree)."""
    folded = unicodedata.normalize("NFKC", str(name)).casefold().translate(_SKELETON)
    return folded.replace("rn", "m").replace("vv", "w")


def max_queued() -> int:
    """Runs one user may have waiting or training at once: $TL_STUDIO_MAX_QUEUED, else 2."""
    return _env_int(MAX_QUEUED_ENV, 2)


# ---------------------------------------------------------------- names

def claim_name(name: str, workspace: Path | None = None) -> Space:
    """Make the space of a new user; ValueError when the name is taken (its owner comes back by their link)."""
    name = clean_name(name)
    root = users_root(workspace)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    taken = ValueError(f"{name!r} is already someone's name in this class, or looks like one: choose another "
                       "one. If it is yours, open your sign-in link again, or ask your teacher for a fresh one.")
    with _names_lock(root):  # two sessions claiming 'alice' and 'аlice' at once: one of them wins
        skeleton = name_skeleton(name)
        if any(name_skeleton(other.name) == skeleton for other in root.iterdir()
               if other.is_dir() and not other.name.startswith(".")):
            raise taken
        try:
            (root / name).mkdir(mode=0o700)
        except FileExistsError:
            raise taken from None
    return Space(Path(workspace or workspace_root()), name)


@contextmanager
def _names_lock(root: Path):
    with _file_lock(root / ".names.lock"):
        yield


@contextmanager
def _file_lock(path: Path):
    """An exclusive OS lock (flock) held for the block: shared by every thread and process on this machine."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def given_name(workspace: Path | None = None) -> Space:
    """A new user who gave no name gets one: 'student-7f3a2c'; ValueError after a bounded number of misses."""
    for _ in range(_GIVEN_NAME_TRIES):
        try:
            return claim_name(f"student-{secrets.token_hex(3)}", workspace)
        except ValueError:
            continue
    raise ValueError("no free name could be found for you: type a name of your own")


def quota_bytes() -> int:
    """Disk one user's datasets and runs may take: $TL_STUDIO_QUOTA_MB megabytes, else 500."""
    return _env_int(QUOTA_MB_ENV, 500) * 1_000_000  # decimal, as human_bytes shows it


def max_datasets() -> int:
    """Datasets one user may keep: $TL_STUDIO_MAX_DATASETS, else 20."""
    return _env_int(MAX_DATASETS_ENV, 20)


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, str(default))))
    except ValueError:
        return default


class QuotaExceeded(ValueError):
    """A user's disk or dataset limit would be passed: the message names the limit and what is used."""


def tree_bytes(folder: str | Path) -> int:
    """Bytes of the files under a folder (links not followed)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for file in files:
            try:
                total += os.lstat(os.path.join(dirpath, file)).st_size
            except OSError:
                continue
    return total


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

    # ---- limits
    def usage(self) -> tuple[int, int]:
        """(bytes on disk, number of datasets) this user takes: their folder and their own runs."""
        if self.user is None:
            return 0, 0
        datasets_dir = self.data_workspace / "datasets"
        count = sum(1 for d in datasets_dir.iterdir() if (d / "manifest.json").is_file()) \
            if datasets_dir.is_dir() else 0
        return tree_bytes(self.data_workspace) + sum(tree_bytes(p) for p in self.my_runs()), count

    def check_room(self, adding_bytes: int = 0, new_dataset: bool = False) -> None:
        """QuotaExceeded when adding this much (and one more dataset) would pass this user's limits.
        The laptop's user and the teacher have none."""
        if self.user is None or self.teacher:
            return
        used, count = self.usage()
        if new_dataset and count >= max_datasets():
            raise QuotaExceeded(f"you already keep {count} datasets, the most each student may keep in this "
                                f"class ({MAX_DATASETS_ENV}={max_datasets()}): delete one on the Data page first")
        if used + max(0, adding_bytes) > quota_bytes():
            raise QuotaExceeded(f"this would take your space to {human_bytes(used + adding_bytes)}, over the "
                                f"{human_bytes(quota_bytes())} each student may use in this class "
                                f"({QUOTA_MB_ENV}={quota_bytes() // 1_000_000}): delete a dataset or a run first")

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
        home = space.data_workspace
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The count and the submit under one OS lock per user: six tabs clicking Start at once queue no more
        # than the limit, whichever server process or thread serves them.
        with _file_lock(home / ".submit.lock"):
            waiting = len(space.active_runs())
            if not space.teacher and waiting >= max_queued():
                raise ValueError(f"you already have {waiting} runs waiting or training (at most {max_queued()} at "
                                 "once in this class): wait for one to end, or stop one, then start this one")
            space.check_room()
            return self.queue.submit(config, owner=space.owner)

    def cancel(self, run_dir) -> None:
        self.queue.cancel(self.space.run(run_dir))

    def __getattr__(self, name):
        return getattr(self.queue, name)
