"""A real Streamlit server of the app and a plain websocket client that speaks Streamlit's own protocol.

The client does what a browser's Streamlit frontend does, without a browser: it connects to /_stcore/stream,
asks for a script run (BackMsg.rerun_script, with a page name as a deep link sends it, widget values as a form
sends them) and reads back the ForwardMsgs (deltas: the elements the page drew). Tests and bench/ use it to
attack the gate and to measure the server under many clients.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["Backbone", "Data", "Layers", "Train", "Results", "Predict", "Export", "Runs", "Class"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run app.py` on a free port of 127.0.0.1, with the environment given; stop() ends it."""

    def __init__(self, workspace: Path, log: Path, root: Path = ROOT, argv: list[str] | None = None, **env: str):
        self.root = Path(root)  # another checkout's app (bench/: the code before a change)
        self.argv = argv or ["-m", "streamlit", "run", "app.py"]  # bench/profile_server.py runs it under a profiler
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, TL_STUDIO_HOME=str(workspace), **env)
        self.log_path = log
        self.proc = None

    def start(self) -> "Server":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv, "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server ended: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the server did not become healthy in 90 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()
            self.proc = None

    def restart(self) -> "Server":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Client:
    """One browser session over a websocket: rerun(page, widgets) returns what the script run drew."""

    def __init__(self, url: str, query: str = "", cookies: dict[str, str] | None = None, timeout: float = 60,
                 source: str | None = None):
        ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else None
        # `source`: the client's own address (127.0.0.2...), as another computer of the class would have one
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0)) if source else None
        # no keepalive pings: a server busy with 30 script runs answers late, and that is what is measured
        self.ws = connect(ws_url, legacy=True, subprotocols=["streamlit"], additional_headers=headers, max_size=2**26,
                          ping_interval=None, sock=sock,
                          open_timeout=timeout)
        self.query, self.timeout = query, timeout
        self.session_id = None
        self.page_hash = ""

    def close(self) -> None:
        self.ws.close()

    def rerun(self, page: str = "", widgets: list | None = None, page_hash: str | None = None) -> "Run":
        """Ask for a script run of `page` (its address path, '' for the main page), as a browser does."""
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.page_name = page
        state.page_script_hash = (("" if page else self.page_hash) if page_hash is None else page_hash)
        for widget in widgets or []:
            state.widget_states.widgets.append(widget)
        self.ws.send(msg.SerializeToString())
        return self.read_run()

    def read_run(self) -> "Run":
        run = Run()
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            data = self.ws.recv(timeout=max(0.1, deadline - time.time()))
            fwd = ForwardMsg()
            fwd.ParseFromString(data)
            kind = fwd.WhichOneof("type")
            if kind == "new_session":
                self.session_id = fwd.new_session.initialize.session_id
                self.page_hash = fwd.new_session.page_script_hash
            elif kind == "page_info_changed":
                self.query = fwd.page_info_changed.query_string
            elif kind == "delta":
                run.deltas.append(fwd.delta)
            elif kind == "navigation":
                run.navigation = fwd.navigation
                self.page_hash = fwd.navigation.page_script_hash or self.page_hash
            elif kind == "script_finished":
                if fwd.script_finished in (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_EARLY_FOR_RERUN,
                                           ForwardMsg.FINISHED_WITH_COMPILE_ERROR):
                    run.finished = fwd.script_finished
                    if fwd.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                        return run
                    run.deltas.clear()  # a rerun follows: what counts is what the next run draws
        raise TimeoutError("the script run did not finish")

    def token(self) -> str:
        return urllib.parse.parse_qs(self.query).get("me", [""])[0]


class Run:
    """What one script run drew."""

    def __init__(self):
        self.deltas = []
        self.navigation = None
        self.finished = None

    def elements(self):
        return [d.new_element for d in self.deltas if d.WhichOneof("type") == "new_element"]

    def text(self) -> str:
        """Every element of the run as protobuf text: labels, bodies, values."""
        return "\n".join(str(e) for e in self.elements())

    def widget(self, kind: str, label: str):
        """The widget proto (its id, label...) of the first `kind` element ('text_input', 'button') with `label`."""
        for element in self.elements():
            if element.WhichOneof("type") == kind and getattr(element, kind).label == label:
                return getattr(element, kind)
        raise LookupError(f"no {kind} labelled {label!r} in:\n{self.text()[:3000]}")

    def has(self, kind: str) -> bool:
        return any(e.WhichOneof("type") == kind for e in self.elements())

    def pages(self) -> list[str]:
        return [p.page_name for p in self.navigation.app_pages] if self.navigation else []


def text_value(widget_id: str, value: str):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, string_value=value)


def click(widget_id: str):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, trigger_value=True)


def sign_in(client: Client, code: str, name: str | None = "", page: str = "") -> Run:
    """Fill the sign-in form the gate drew (code, and a name unless the address is a link) and press Enter."""
    form = client.rerun(page, page_hash="")  # widget ids depend on the page the run asked for: ask the same
    widgets = [text_value(form.widget("text_input", "Access code").id, code)]
    if name is not None:
        widgets.append(text_value(form.widget("text_input", "Your name").id, name))
    widgets.append(click(form.widget("button", "Enter").id))
    return client.rerun(page, widgets, page_hash="")
