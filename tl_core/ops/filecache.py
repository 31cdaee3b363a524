"""Results read from files, kept while those files are unchanged.

A classroom server reruns a page for every click of every user, and most of what a page reads (run records,
metrics, event logs, dataset manifests) has not changed since the previous rerun. A cached result here is keyed
on a stamp of the files it was read from, taken again on every call: what os.stat says of each (inode,
modification time in nanoseconds, size). The project writes its files atomically (a temporary file renamed:
a new inode) or appends to them (a new size), so a stamp changes with every write, even two writes within the
file system's timestamp granularity. A stat costs a few microseconds; parsing the file costs far more.
"""
from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from functools import wraps
from pathlib import Path
from typing import Callable


def file_stamp(path: str | Path) -> tuple | None:
    """(inode, mtime in ns, size) of a file; None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def folder_stamp(folder: str | Path) -> tuple:
    """The stamps of every entry of a folder (not its sub-folders' contents), by name; () when it is missing.
    An entry added, removed, replaced or appended to changes it."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return ()
    stamps = []
    for entry in entries:
        try:
            stat = entry.stat()
        except OSError:  # removed while listed: the next call sees it gone
            continue
        stamps.append((entry.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(stamps))


def keyed_on(stamp_of: Callable[..., object], maxsize: int = 4096, copy_result: bool | Callable = True):
    """Cache a function of paths: a call whose files' stamp (stamp_of(its arguments)) differs from the one the
    kept result was read under reads them again. One result is kept per arguments, the latest, so an old stamp
    never comes back to life. Each caller gets its own deep copy (copy_result; or copy_result(result), a cheaper
    copy that knows the result's shape), so changing a result changes no cache. Safe from several threads (a
    server's sessions); the least recently used go past `maxsize`."""
    def decorate(function):
        entries: OrderedDict = OrderedDict()  # arguments -> (stamp, result)
        lock = threading.Lock()

        @wraps(function)
        def cached(*args):
            stamp = stamp_of(*args)
            with lock:
                kept = entries.get(args)
                if kept is not None:
                    entries.move_to_end(args)
            if kept is None or kept[0] != stamp:
                kept = (stamp, function(*args))
                with lock:
                    entries[args] = kept
                    while len(entries) > maxsize:
                        entries.popitem(last=False)
            if callable(copy_result):
                return copy_result(kept[1])
            return copy.deepcopy(kept[1]) if copy_result else kept[1]

        cached.cache_clear = entries.clear
        return cached
    return decorate


def copy_records(records: list[dict]) -> list[dict]:
    """A copy of a list of flat records (events, rows) for keyed_on: each record copied, and deep-copied only in
    its values that are containers. Several times cheaper than copy.deepcopy on a run's thousands of events."""
    return [{key: copy.deepcopy(value) if isinstance(value, (dict, list, set)) else value
             for key, value in record.items()} if isinstance(record, dict) else copy.deepcopy(record)
            for record in records]
