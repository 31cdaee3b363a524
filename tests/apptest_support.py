"""What the AppTest-driven tests share: app.py's navigation kept on, a job manager that starts no worker.

Modules opt in with `pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")` (conftest.py).
"""
import re
from pathlib import Path

from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from tl_core.ops import runs
from tl_core.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


class FakeJobManager:
    """Records submissions and makes queued run folders; starts no worker."""

    instances: list["FakeJobManager"] = []

    def __init__(self, workspace=None, **_):
        self.workspace = Path(workspace) if workspace else None
        self.submitted: list[RunConfig] = []
        self.cancelled: list[Path] = []
        FakeJobManager.instances.append(self)

    def submit(self, config: RunConfig, owner: str | None = None) -> Path:
        self.submitted.append(config)
        return runs.create_run(config, self.workspace, owner=owner)

    def cancel(self, run_dir) -> None:
        self.cancelled.append(Path(run_dir))
        runs.request_stop(Path(run_dir))

    def queue_position(self, run_dir):
        return 1 if runs.read_status(Path(run_dir)).get("state") == "queued" else None

    def expected_wait(self, run_dir):
        return None

    def running(self):
        return []


class NavigationPagesManager(PagesManager):
    """A running server remembers that app.py calls st.navigation; AppTest forgets it before every run
    and, seeing a folder named pages/, runs the page script alone (Streamlit's old multipage mode)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        PagesManager.uses_pages_directory = False


def plain(markdown: str) -> str:
    """The text a markdown body shows: pages.ui.text.literal()'s escapes and word joiners removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def open_page(page: str | None = None, **state) -> AppTest:
    """Run app.py, set session state, then switch to `page` (a path like "pages/2_Data.py")."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    if page:
        at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at
