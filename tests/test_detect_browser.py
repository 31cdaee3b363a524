"""The box editor in a real browser (Debian's Chromium through Playwright): a picture with its boxes drawn by
tl_core, the table of boxes, and saving them as a new version of the dataset."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, free_port, wait_until_healthy
from tl_core.detect.sample import write_set

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.browser


def test_box_editor_shows_the_boxes_and_saves_a_new_version(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import expect, sync_playwright

    from tl_core.detect.formats import ingest

    workspace = tmp_path / "workspace"
    env = dict(os.environ, TL_STUDIO_HOME=str(workspace))
    os.environ["TL_STUDIO_HOME"] = str(workspace)
    root = ingest(write_set(tmp_path / "coco", 5, "coco", seed=3, size=128))
    env["DETECT_DATASET"] = str(root)
    port = free_port()
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "tests/detect_editor_app.py",
                               "--server.headless", "true", "--server.port", str(port), "--server.address",
                               "127.0.0.1", "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url)
            expect(page.get_by_text("Draw or correct boxes")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Audit")).to_be_visible()
            expect(page.get_by_test_id("stImage").first).to_be_visible(timeout=30_000)
            expect(page.get_by_test_id("stDataFrame").last).to_be_visible()
            before = sorted(p.name for p in (workspace / "datasets").glob("detect-*"))
            page.get_by_role("button", name="Save these boxes").click()
            page.wait_for_timeout(3000)
            expect(page.get_by_text("Draw or correct boxes")).to_be_visible(timeout=60_000)
            after = sorted(p.name for p in (workspace / "datasets").glob("detect-*"))
            assert len(after) == len(before) + 1
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
