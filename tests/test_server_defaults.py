"""Safe server defaults: no file watcher, localhost only, no tracebacks in the browser, bounded uploads,
and an access code before any page renders when the app serves a classroom."""
import tomllib
from pathlib import Path

import pytest

from apptest_support import open_page, plain
from pages.ui import gate

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")
ROOT = Path(__file__).resolve().parent.parent


def test_the_server_config_is_safe_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server, client = config["server"], config["client"]
    assert server["fileWatcherType"] == "none" and server["runOnSave"] is False  # no CPU spent watching files
    assert server["address"] == "localhost"
    assert client["showErrorDetails"] == "none"  # no tracebacks with server paths in the browser
    assert server["maxUploadSize"] <= 200 and server["enableXsrfProtection"] is True
    assert client["allowedOrigins"] == []


def test_an_access_code_is_asked_before_any_page_renders(monkeypatch):
    monkeypatch.setenv(gate.ACCESS_CODE_ENV, "tulip-42")
    at = open_page()
    assert [t.label for t in at.text_input] == ["Access code", "Your name"] and not at.dataframe  # no page yet
    at.text_input(key="access_code_given").set_value("tulip-41")
    at.button[0].click().run()
    assert plain(at.error[0].value) == "That is not the access code." and not at.dataframe
    at.text_input(key="access_code_given").set_value("tulip-42")
    at.button[0].click().run()
    assert not at.exception and at.dataframe  # the Backbone page's catalogue
    at.run()
    assert at.dataframe  # the session stays in
    monkeypatch.setenv(gate.ACCESS_CODE_ENV, "another")
    at.run()
    assert not at.dataframe  # a new code ends every session


def test_listening_on_the_network_without_an_access_code_is_refused(monkeypatch):
    monkeypatch.delenv(gate.ACCESS_CODE_ENV, raising=False)
    monkeypatch.setattr(gate, "listens_on_network", lambda: True)
    at = open_page()
    assert "listens on the network" in plain(at.error[0].value) and gate.ACCESS_CODE_ENV in at.error[0].value
    assert not at.dataframe
