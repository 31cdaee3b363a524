"""The server's heap: what it loaded once (torch, timm, plotly, pandas...) kept out of the garbage collector's walks.

A server process holds millions of long-lived objects from its imports. Python's collector walks all of them in
each full (generation 2) collection, which it starts by itself as sessions allocate: measured under a class's
load, 0.3 s on average and up to 0.6 s, with every session's script waiting (bench/RESULTS.md, "Server CPU per
rerun"). gc.freeze() moves the objects alive now into a permanent generation that collections skip. It is
called after each script run and acts only when that run imported new modules (the first visit of a page), so
a frozen heap follows what the server has loaded; before freezing, the young generations are collected, so
little garbage of that moment is kept for the process's life. Only a real server freezes: a test process
(AppTest: no browser's request headers) lets go of its apps between tests, and frozen cycles are never freed.
"""
from __future__ import annotations

import gc
import sys
import threading

import streamlit as st

_lock = threading.Lock()
_modules_frozen = [0]  # how many modules were loaded at the last freeze


def freeze_what_is_loaded() -> None:
    """Exempt every object alive now from full collections, when modules were imported since the last time."""
    if len(sys.modules) == _modules_frozen[0] or not _served():
        return
    with _lock:
        if len(sys.modules) == _modules_frozen[0]:
            return
        gc.collect(1)
        gc.freeze()
        _modules_frozen[0] = len(sys.modules)


def _served() -> bool:
    """Whether a browser's (or websocket client's) request runs this script: a server, not AppTest."""
    try:
        return bool(st.context.headers)
    except Exception:  # no script run context
        return False
