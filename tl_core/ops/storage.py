"""Where things live on disk, writes that a reader never sees half-done, and reads that survive damage."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def workspace_root() -> Path:
    """The workspace folder: `$TL_STUDIO_HOME`, else `./workspace`."""
    return Path(os.environ.get("TL_STUDIO_HOME", "workspace")).resolve()


class StorageFull(OSError):
    """A write failed for lack of space; the message names the path, the size needed and what to do."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None, cause: OSError | None = None):
        self.path, self.needed = Path(path), needed
        code = cause.errno if cause is not None and cause.errno in _FULL_ERRNOS else errno.ENOSPC
        super().__init__(code, disk_full_message(path, needed))

    def __str__(self) -> str:
        return self.strerror


def disk_full_message(path: str | os.PathLike, needed: int | None = None) -> str:
    """'PATH: the disk is full (N MB needed, M MB free on MOUNT); free space or ...'."""
    free = free_bytes(path)
    wanted = f"{human_bytes(needed)} needed, " if needed else ""
    room = f"{human_bytes(free)} free" if free is not None else "no free space"
    return (f"{path}: the disk is full ({wanted}{room} on {_mount_point(path)}); delete old runs or datasets "
            f"(Runs page, or the folders under {workspace_root()}), or set TL_STUDIO_HOME to a disk with room")


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _mount_point(path: str | os.PathLike) -> str:
    candidate = Path(os.path.abspath(path))
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    while not os.path.ismount(candidate) and candidate != candidate.parent:
        candidate = candidate.parent
    return str(candidate)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


@contextmanager
def atomic_file(path: str | os.PathLike, size_hint: int | None = None):
    """An open binary file that replaces `path` only when the block ends without error.

    A full disk raises StorageFull naming `path` and about how much room the write needed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            except OSError as error:
                if is_disk_full(error) and not isinstance(error, StorageFull):
                    written = _tell(f)
                    raise StorageFull(path, max(size_hint or 0, written or 0) or None, error) from None
                raise
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, StorageFull):
            raise StorageFull(path, size_hint, error) from None
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _tell(f) -> int | None:
    try:
        return f.tell()
    except (OSError, ValueError):
        return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it into place."""
    with atomic_file(path, size_hint=len(data)) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """A plain write whose full-disk error names the file and the size."""
    try:
        Path(path).write_bytes(data)
    except OSError as error:
        if is_disk_full(error):
            Path(path).unlink(missing_ok=True)
            raise StorageFull(path, len(data), error) from None
        raise


class DamagedFile(ValueError):
    """A file exists but cannot be read as what it should hold; `reason` says why in plain words."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def read_json(path: str | os.PathLike, default=None):
    """Read a JSON file; `default` when it does not exist yet; DamagedFile (a ValueError) when it is unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return default
    except IsADirectoryError:
        raise DamagedFile(path, "a folder, not a file") from None
    return parse_json(data, path)


def parse_json(data: bytes, path: str | os.PathLike = "JSON"):
    """The JSON value in `data`, or DamagedFile saying what is wrong: empty, cut short, not UTF-8, not JSON."""
    if not data.strip():
        raise DamagedFile(path, "empty file" if not data else "holds only blank space")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DamagedFile(path, f"not UTF-8 text (byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        cut = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
        what = "cut short (truncated JSON)" if cut else f"not valid JSON ({error.msg} at line {error.lineno}, " \
                                                         f"column {error.colno})"
        raise DamagedFile(path, what) from None
    except RecursionError:
        raise DamagedFile(path, "nested too deeply to read") from None
