"""Two students in two real browsers on one classroom server: each keeps their own name and choices through a
reload, and neither sees the other's dataset. Debian's Chromium through Playwright, as test_browser.py."""
import os
import subprocess
import sys

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, go_to, wait_until_healthy

pytestmark = pytest.mark.browser
CODE = "tulip-42"


@pytest.fixture
def classroom_url(tmp_path):
    port = free_port()
    env = dict(os.environ, TL_STUDIO_HOME=str(tmp_path / "workspace"), TL_STUDIO_ACCESS_CODE=CODE)
    log = open(tmp_path / "streamlit.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
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


def sign_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.get_by_role("textbox", name="Access code").fill(CODE)
    page.get_by_role("textbox", name="Your name").fill(name)
    page.get_by_role("button", name="Enter").click()


def test_two_students_each_keep_their_own_session_through_a_reload(classroom_url):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        alice = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        bob = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        expect.set_options(timeout=60_000)
        try:
            sign_in(alice, classroom_url, "alice")
            expect(alice.get_by_text("Signed in as alice")).to_be_visible()
            go_to(alice, "2 · Data")
            alice.get_by_role("button", name="Try the sample dataset").click()
            expect(alice.get_by_text("Now using the dataset Fashion sample")).to_be_visible()

            sign_in(bob, classroom_url, "bob")
            expect(bob.get_by_text("Signed in as bob")).to_be_visible()
            expect(bob.get_by_text("Data: not chosen yet")).to_be_visible()  # alice's choice is not bob's
            go_to(bob, "2 · Data")
            bob.get_by_role("tab", name="Earlier datasets").click()
            expect(bob.get_by_text("No datasets yet.")).to_be_visible()

            alice.reload()  # a reload: the same student, the same choices, no code asked again
            expect(alice.get_by_text("Signed in as alice")).to_be_visible()
            expect(alice.get_by_text("Fashion sample (300 images, 10 classes)").first).to_be_visible()
            expect(alice.get_by_role("textbox", name="Access code")).to_have_count(0)
            bob.reload()
            expect(bob.get_by_text("Signed in as bob")).to_be_visible()
            expect(bob.get_by_text("Data: not chosen yet")).to_be_visible()
        finally:
            browser.close()


def test_deep_links_before_anyone_signs_in_show_only_the_gate_in_chromium(classroom_url):
    """The first visitor after a start comes by a deep link: Streamlit's folder mode is still on then."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        expect.set_options(timeout=60_000)
        try:
            for name in ("Data", "Train", "Runs", "Results", "Backbone", "Class"):
                page.goto(f"{classroom_url}/{name}")
                expect(page.get_by_role("textbox", name="Access code")).to_be_visible()
                expect(page.get_by_text("Drag and drop")).to_have_count(0)  # no uploader
                expect(page.get_by_text("Signed in as")).to_have_count(0)
                for helper in ("common", "data quality", "target domain", "multitask data"):
                    expect(page.get_by_role("link", name=helper)).to_have_count(0)
            page.goto(f"{classroom_url}/Data")
            page.get_by_role("textbox", name="Access code").fill(CODE)
            page.get_by_role("textbox", name="Your name").fill("erin")
            page.get_by_role("button", name="Enter").click()
            expect(page.get_by_text("Signed in as erin")).to_be_visible()
            expect(page.get_by_role("heading", name="2 · Your images")).to_be_visible()  # the page asked for
            stranger = browser.new_context().new_page()  # another browser with erin's address: the code first
            stranger.goto(page.url)
            expect(stranger.get_by_role("textbox", name="Access code")).to_be_visible()
            expect(stranger.get_by_text("Signed in as erin")).to_have_count(0)
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("textbox", name="Access code")).to_be_visible()
        finally:
            browser.close()
