"""Rate limits of a classroom server that no number of tabs, sessions or server processes can beat.

Wrong access codes are counted per client address and for the whole server; new names are counted per
client address. The counts live in one JSON file of the workspace (users/.attempts.json, 0600) read and
written under an exclusive OS file lock (flock on users/.attempts.lock), so every Streamlit session and every
server process sharing the workspace shares them. Only the times inside the window are kept.

Limits (environment variables, defaults for a class of about 30):
- TL_STUDIO_GUESSES_PER_ADDRESS  wrong codes from one address per window (5)
- TL_STUDIO_GUESSES_PER_SERVER   wrong codes from everyone per window (30)
- TL_STUDIO_NAMES_PER_ADDRESS    new names from one address per window (6; a lab behind one address: raise it)
- TL_STUDIO_LIMIT_WINDOW_S       the window, in seconds (600)
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from tl_core.ops.storage import atomic_write_json, workspace_root

LOG = logging.getLogger("tl_studio.gate")
_STATE = ".attempts.json"
_LOCK = ".attempts.lock"
_DEFAULTS = {"TL_STUDIO_GUESSES_PER_ADDRESS": 5, "TL_STUDIO_GUESSES_PER_SERVER": 30,
             "TL_STUDIO_NAMES_PER_ADDRESS": 6, "TL_STUDIO_LIMIT_WINDOW_S": 600}


class LockedOut(PermissionError):
    """Too many attempts: the message says whose and for how long."""


def limit(name: str) -> int:
    """A limit from the environment (see the module docstring), else its default; never below 1."""
    try:
        return max(1, int(os.environ.get(name, _DEFAULTS[name])))
    except ValueError:
        return _DEFAULTS[name]


@contextmanager
def locked_counts(workspace: Path | None = None):
    """The counts, as a dict of lists of times, held under the server-wide lock; written back on exit."""
    folder = Path(workspace or workspace_root()) / "users"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            counts = json.loads((folder / _STATE).read_text())
        except (OSError, ValueError):
            counts = {}
        counts = counts if isinstance(counts, dict) else {}
        horizon = time.time() - limit("TL_STUDIO_LIMIT_WINDOW_S")
        counts = {key: [t for t in times if isinstance(t, (int, float)) and t > horizon]
                  for key, times in counts.items() if isinstance(times, list)}
        before = json.dumps(counts, sort_keys=True)
        yield counts
        counts = {key: times for key, times in counts.items() if times}
        if json.dumps(counts, sort_keys=True) != before:
            atomic_write_json(folder / _STATE, counts)
    finally:
        os.close(fd)  # releases the lock


def _wait_words(times: list[float]) -> str:
    left = max(1, int(min(times) + limit("TL_STUDIO_LIMIT_WINDOW_S") - time.time()))
    return f"{(left + 59) // 60} minute{'s' if left > 60 else ''}"


def judge_code(address: str, right: bool, workspace: Path | None = None) -> bool:
    """Whether a code given from `address` lets it in: `right`, unless this address or the whole server is
    locked out (LockedOut, saying so, whether the code was right or not: a lockout tells nothing).

    Checked and counted under one lock, so parallel sessions cannot all pass the check before any is counted;
    a wrong code is logged with the address."""
    with locked_counts(workspace) as counts:
        mine, everyone = counts.setdefault(f"guess:{address}", []), counts.setdefault("guess:*", [])
        if len(mine) >= limit("TL_STUDIO_GUESSES_PER_ADDRESS"):
            LOG.warning("access code refused for %s: locked out (%d wrong codes)", address, len(mine))
            raise LockedOut(f"Too many wrong access codes from your address: try again in {_wait_words(mine)}.")
        if len(everyone) >= limit("TL_STUDIO_GUESSES_PER_SERVER"):
            LOG.warning("access code refused for %s: the server is locked out (%d wrong codes)", address,
                        len(everyone))
            raise LockedOut("Too many wrong access codes on this server lately: sign-in is paused for "
                            f"{_wait_words(everyone)}. Your teacher can see it in the server's log.")
        if right:
            return True
        now = time.time()
        mine.append(now)
        everyone.append(now)
        LOG.warning("wrong access code from %s (%d from this address, %d on the server in the last %d s)",
                    address, len(mine), len(everyone), limit("TL_STUDIO_LIMIT_WINDOW_S"))
        return False


def take_new_name(address: str, workspace: Path | None = None) -> None:
    """Count one new name for this address; LockedOut when it has made too many lately (nothing counted)."""
    with locked_counts(workspace) as counts:
        made = counts.setdefault(f"name:{address}", [])
        if len(made) >= limit("TL_STUDIO_NAMES_PER_ADDRESS"):
            LOG.warning("new name refused for %s: %d names in the last %d s", address, len(made),
                        limit("TL_STUDIO_LIMIT_WINDOW_S"))
            raise LockedOut(f"Too many new names from your address: try again in {_wait_words(made)}, "
                            "or ask your teacher for your sign-in link.")
        made.append(time.time())
