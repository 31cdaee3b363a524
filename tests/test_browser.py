"""End to end in a real browser, as a newcomer goes: sample data → train with the defaults → the results'
headline; then a second, augmented run to watch live → its results.

Drives Debian's Chromium through Playwright against `streamlit run app.py`. With TL_SCREENSHOTS=1 it
saves one screenshot per step into assets/screenshots/ for the README.
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "assets" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f} s")


@pytest.fixture
def app_url(tmp_path):
    """A streamlit server on a free port with its own workspace; stopped after the test."""
    port = free_port()
    env = dict(os.environ, TL_STUDIO_HOME=str(tmp_path / "workspace"))
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen(
        # The file watcher is left to .streamlit/config.toml, as `make run` leaves it (no "Inotify" flood).
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print((tmp_path / "streamlit.log").read_text(errors="replace")[-3000:])


def shoot(page, name: str) -> None:
    if os.environ.get("TL_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def go_to(page, step: str) -> None:
    """Follow a step's link in the sidebar navigation (keeps the session, unlike a new URL), and wait for that
    page's title: until then the last page's widgets are still on screen, and a locator could find one of them."""
    from playwright.sync_api import expect
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=step).click()
    number = step.split(" · ")[0] + " · " if " · " in step else step  # "6 · Predict" -> titles start "6 · "
    expect(page.get_by_test_id("stMain").locator("h1").first).to_have_text(re.compile("^" + re.escape(number)))


def watch_progress(page, until, timeout_s: float) -> list[str]:
    """The distinct texts of the run's progress bar, read every half second until `until` shows."""
    from playwright.sync_api import Error as PlaywrightError
    seen: list[str] = []
    deadline = time.time() + timeout_s
    while not until.is_visible():
        assert time.time() < deadline, f"the run did not finish within {timeout_s:.0f} s; progress: {seen[-3:]}"
        try:  # the live fragment redraws every second: the bar may be gone between two reads
            text = page.get_by_test_id("stProgress").first.inner_text(timeout=1_000).strip()
        except PlaywrightError:
            text = ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        page.wait_for_timeout(500)
    return seen


@pytest.mark.timeout(1800)  # two real runs on a CPU, the first with the Auto plan's measurements
def test_sample_data_to_trained_classifier_in_the_browser(app_url, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # the first run imports torch and timm
        try:
            page.goto(app_url)
            expect(page.get_by_role("heading", name="1 · Choose a backbone")).to_be_visible()
            expect(page.get_by_text("Weights available offline: yes")).to_be_visible()
            expect(page.get_by_text("Device: ")).to_be_visible()
            page.wait_for_timeout(1500)  # let the catalogue table draw
            shoot(page, "1_backbone")

            go_to(page, "2 · Data")
            page.get_by_role("button", name="Try the sample dataset").click()
            expect(page.get_by_text("Now using the dataset Fashion sample")).to_be_visible()
            expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
            page.wait_for_timeout(1000)
            shoot(page, "2_data")

            go_to(page, "3 · Layers")
            expect(page.get_by_text("Trainable parameters")).to_be_visible()
            expect(page.get_by_text("Only the head learns").first).to_be_visible()
            expect(page.get_by_test_id("stMetricValue").first).to_have_text("12,810")  # the head of 10 classes
            page.wait_for_timeout(1000)
            shoot(page, "3_layers")

            # The newcomer's run: every default, the Auto plan included.
            go_to(page, "4 · Train")
            expect(page.get_by_text("if the Auto plan keeps feature extraction").first).to_be_visible()
            page.get_by_role("button", name="Start training").click()
            progress_texts = watch_progress(page, until=page.get_by_text("final validation accuracy"), timeout_s=900)
            assert progress_texts, "no progress was shown while the run trained"
            assert not any(text.startswith("Epoch 0 of") for text in progress_texts), progress_texts
            page.get_by_role("link", name="See the results").click()
            accuracy = page.get_by_test_id("stMetric").filter(has_text="Accuracy").first
            expect(accuracy).to_contain_text(re.compile(r"95 %: [\d.]+%–[\d.]+%"))  # the headline, with its interval
            expect(page.get_by_test_id("stSidebar").get_by_text("Showing run")).to_be_visible()

            # A second run to watch live: smaller images, one epoch, augmented so epochs pass through images.
            go_to(page, "4 · Train")
            size_input = page.get_by_role("spinbutton", name="Image size (px)")
            size_input.fill("96")
            size_input.press("Enter")
            epochs_input = page.get_by_role("spinbutton", name="Epochs", exact=True)
            epochs_input.fill("1")
            epochs_input.press("Enter")
            page.get_by_text("Light: crops and flips").click()  # epochs then go through the images: a live run to watch
            expect(page.get_by_text("What training sees")).to_be_visible()
            expect(page.get_by_text("Flips mirror the images").first).to_be_visible()
            page.wait_for_timeout(1000)
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text("final validation accuracy")).to_be_hidden()  # the first run's end, replaced
            in_progress = page.get_by_text(re.compile(r"^Epoch \d+ of \d+"))
            expect(in_progress.or_(page.get_by_text("final validation accuracy"))).to_be_visible(timeout=120_000)
            expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
            page.wait_for_timeout(500)
            shoot(page, "4_train_live")
            expect(page.get_by_text("final validation accuracy")).to_be_visible(timeout=180_000)
            page.wait_for_timeout(1000)
            shoot(page, "4_train_done")

            page.get_by_role("link", name="See the results").click()
            expect(page.get_by_text("Validation images it got wrong")).to_be_visible()
            expect(page.get_by_test_id("stMetric").first).to_be_visible()
            page.wait_for_timeout(1500)
            shoot(page, "5_results")
        finally:
            browser.close()
    assert "Inotify" not in (tmp_path / "streamlit.log").read_text(errors="replace")
