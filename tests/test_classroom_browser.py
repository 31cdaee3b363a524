"""Two students in two real browsers on one classroom server: each keeps their own name and choices through a
reload, and neither sees the other's dataset. Debian's Chromium through Playwright, as test_browser.py."""
import os
import subprocess
import sys

import pytest

from tl_core.use.run_facts import run_name

from test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, app_url, free_port, go_to, wait_until_healthy  # noqa: F401

pytestmark = pytest.mark.browser
CODE, TEACHER_CODE = "tulip-42", "oak-7"


@pytest.fixture
def classroom_url(tmp_path):
    port = free_port()
    env = dict(os.environ, TL_STUDIO_HOME=str(tmp_path / "workspace"), TL_STUDIO_ACCESS_CODE=CODE,
               TL_STUDIO_TEACHER_CODE=TEACHER_CODE)
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


def test_the_class_page_follows_a_run_to_its_end_without_a_click(classroom_url, _workspace):
    """A student's run trains (this test holds its lock, as a worker would); the teacher's Class page shows its
    progress, then, with nobody touching the page, that it ended."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    import json
    import time

    from playwright.sync_api import expect, sync_playwright

    from test_classroom import dataset_of
    from tl_core.config import RunConfig
    from tl_core.models import backbones
    from tl_core.ops import runs, spaces

    alice = spaces.claim_name("alice")
    config = RunConfig(dataset_dir=str(dataset_of(alice, name="alice's leaves").root), backbone=backbones.EMBEDDED_MODEL)
    run_dir = runs.create_run(config, alice.workspace, owner="alice")
    lock = runs.try_lock(runs.RunFolder(run_dir).lock)  # "a worker trains it": the server starts none, fails none
    start = time.time()
    runs.RunFolder(run_dir).events.write_text(
        json.dumps({"t": start, "event": "fit_start", "epochs": 5}) + "\n"
        + json.dumps({"t": start + 1, "event": "epoch_end", "phase": "probe", "epoch": 1, "seconds": 1.0}) + "\n")
    runs.write_status(run_dir, state="running", started=start)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
        expect.set_options(timeout=60_000)
        try:
            page.goto(classroom_url)
            expect(page.get_by_text("Teacher? Your teacher code goes in the Access code box")).to_be_visible()
            page.get_by_role("textbox", name="Access code").fill(TEACHER_CODE)
            page.get_by_role("button", name="Enter").click()
            go_to(page, "Class")
            expect(page.get_by_text(f"alice · {run_name(run_dir)}: Epoch 1 of 5")).to_be_visible()
            training = page.get_by_test_id("stMetric").filter(has_text="Training now").get_by_test_id("stMetricValue")
            expect(training).to_have_text("1")
            runs.write_status(run_dir, state="done", ended=time.time())
            runs.unlock(lock)
            expect(training).to_have_text("0", timeout=20_000)  # the fragment read it again by itself
            expect(page.get_by_text(f"alice · {run_name(run_dir)}: Epoch")).to_have_count(0)
        finally:
            browser.close()


def zip_of(members: dict) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_held_out_test_and_batch_predict_in_chromium(app_url, head_run, fashion_test_dir, tmp_path):
    """A finished run: tested on a held-out zip on Results, then a zip of pictures predicted at once on Predict,
    with the CSV downloaded."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    import csv
    import shutil

    from playwright.sync_api import expect, sync_playwright

    shutil.copytree(head_run, tmp_path / "workspace" / "runs" / head_run.name)
    held_out = zip_of({f"{name}/{path.name}": path.read_bytes() for name in ("Trouser", "Bag", "Sneaker", "Dress")
                       for path in sorted((fashion_test_dir / name).glob("*.png"))[:5]})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
        expect.set_options(timeout=90_000)
        try:
            page.goto(app_url)
            go_to(page, "5 · Results")
            uploader = page.get_by_test_id("stFileUploader").filter(has_text="A .zip with one folder per class")
            uploader.locator("input[type=file]").set_input_files(
                files=[{"name": "held out.zip", "mimeType": "application/zip", "buffer": held_out}])
            page.get_by_role("button", name="Test on this zip").click()
            expect(page.get_by_text("Last test: held out.zip")).to_be_visible()
            tested = page.get_by_test_id("stMetric").filter(has_text="Pictures tested").get_by_test_id("stMetricValue")
            expect(tested).to_have_text("20")

            go_to(page, "6 · Predict")
            page.get_by_test_id("stFileUploader").filter(has_text="Images to classify").locator(
                "input[type=file]").set_input_files(
                files=[{"name": "many.zip", "mimeType": "application/zip", "buffer": held_out}])
            expect(page.get_by_text("20 pictures")).to_be_visible()
            with page.expect_download() as download:
                page.get_by_role("button", name="Download the predictions (CSV)").click()
            rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8")))
            assert len(rows) == 20 and all(row["predicted"] in ("Trouser", "Bag", "Sneaker", "Dress") for row in rows)
            assert rows[0]["file"].startswith("many.zip/") and rows[0]["unlike_training"] in ("True", "False")
        finally:
            browser.close()
