"""Past one core: two `streamlit run app.py` processes on one workspace, behind a reverse proxy with sticky
sessions (tests/sticky_proxy.py, as nginx's ip_hash; README, "More than one core"). A student is one student
on either process (the sign-in records, the secret and their choices are in the workspace), sees only their own
things on both, and the per-user limit holds when their tabs on both processes press Start at once (a per-user
OS file lock); both processes show the one queue."""
import json
import re
import threading

import pytest

from live_server import Client, Server, click, free_port, sign_in
from sticky_proxy import StickyProxy
from tl_core.data import datasets
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.ops import jobs, runs

CODE, TEACHER_CODE = "tulip-42", "oak-7"
COOKIE = "tl_studio_browser"


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    home = tmp_path_factory.mktemp("two_servers")
    env = dict(TL_STUDIO_ACCESS_CODE=CODE, TL_STUDIO_TEACHER_CODE=TEACHER_CODE, TL_STUDIO_NAMES_PER_ADDRESS="50",
               TL_STUDIO_GUESSES_PER_SERVER="1000",
               STREAMLIT_SERVER_COOKIE_SECRET="one-secret-for-every-process")  # the same XSRF cookies on both
    servers = [Server(home / "workspace", home / f"streamlit-{i}.log", **env) for i in range(2)]
    for server in servers:
        server.start()
    proxy = StickyProxy([("127.0.0.1", server.port) for server in servers], free_port()).start()
    # one client address per process: what the proxy's hash sends to each
    addresses = [f"127.0.0.{i}" for i in range(2, 60)]
    by_backend = {index: [a for a in addresses if proxy.backend_for(a) == index] for index in (0, 1)}
    try:
        yield {"home": home, "workspace": home / "workspace", "servers": servers, "proxy": proxy,
               "url": f"http://127.0.0.1:{proxy.port}", "by_backend": by_backend}
    finally:
        proxy.stop()
        for server in servers:
            server.stop()


def browser_key(run) -> str:
    found = re.search(COOKIE + r"=([A-Za-z0-9_-]+)", run.text())
    assert found, run.text()
    return found.group(1)


def test_the_proxy_keeps_each_client_on_one_process_and_uses_both(classroom):
    proxy, url, by_backend = classroom["proxy"], classroom["url"], classroom["by_backend"]
    assert by_backend[0] and by_backend[1]
    for address in (by_backend[0][0], by_backend[1][0]):
        for _ in range(2):  # a second connection (a reload) reaches the same process
            client = Client(url, source=address)
            assert client.rerun("").finished is not None
            client.close()
    assert {proxy.chosen[by_backend[0][0]], proxy.chosen[by_backend[1][0]]} == {0, 1}
    for server in classroom["servers"]:
        assert server.proc.poll() is None  # both serve


def test_a_student_is_the_same_student_on_both_processes_and_sees_only_their_own(classroom):
    url, by_backend, workspace = classroom["url"], classroom["by_backend"], classroom["workspace"]
    first = Client(url, source=by_backend[0][0])
    signed = sign_in(first, CODE, "alice", page="Data")
    assert "Signed in as alice" in signed.text()
    token, key = first.token(), browser_key(signed)
    first.close()
    home = workspace / "users" / "alice"
    data = datasets.ingest_files([(p.name, p.read_bytes(), c) for c in ("Bag", "Trouser")
                                  for p in sorted((SAMPLE_DIR / c).glob("*.png"))[:4]], workspace=home)
    (home / "state.json").write_text(json.dumps({"dataset_dir": str(data.root)}))  # her choice, as saved
    # the same browser, now reaching the other process (after its address changed, or the proxy's mind did)
    other = Client(url, query=f"me={token}", cookies={COOKIE: key}, source=by_backend[1][0])
    page = other.rerun("Data")
    assert "Signed in as alice" in page.text() and "Images" in page.text()  # her dataset, restored from the workspace
    other.close()
    classroom["alice"] = (token, key)
    bob = Client(url, source=by_backend[1][1])
    assert "Signed in as bob" in sign_in(bob, CODE, "bob").text()
    bob_data = bob.rerun("Data").text()
    assert data.root.name not in bob_data and "No dataset chosen yet" in bob_data
    bob.close()


def test_the_per_user_limit_holds_when_tabs_on_both_processes_press_start_at_once(classroom):
    url, by_backend, workspace = classroom["url"], classroom["by_backend"], classroom["workspace"]
    token, key = classroom["alice"]
    (workspace / "locks").mkdir(exist_ok=True)
    held = [runs.try_lock(path) for path in jobs.slot_lock_paths(workspace, 8)]  # no worker starts: nothing trains
    assert None not in held
    tabs = [Client(url, query=f"me={token}", cookies={COOKIE: key}, timeout=180, source=by_backend[i % 2][0])
            for i in range(6)]
    try:
        starts = [tab.rerun("Train").widget("button", "Start training").id for tab in tabs]
        barrier, outcomes = threading.Barrier(6), []

        def press(tab, button_id):
            barrier.wait()
            outcomes.append(tab.rerun("Train", [click(button_id)]).text())

        threads = [threading.Thread(target=press, args=pair) for pair in zip(tabs, starts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        mine = [run for run in runs.list_runs(workspace) if runs.read_owner(run) == "alice"]
        assert len(mine) == 2, [run.name for run in mine]
        assert sum("already have 2 runs waiting or training" in text for text in outcomes) == 4
        assert all(runs.read_status(run).get("state") == "queued" for run in mine)
        # the one queue, seen from both processes: a new tab on each shows alice's run waiting in it
        for backend in (0, 1):
            tab = Client(url, query=f"me={token}", cookies={COOKIE: key}, source=by_backend[backend][2])
            assert "in the queue (position" in tab.rerun("Train").text()
            tab.close()
    finally:
        for tab in tabs:
            tab.close()
        for run in runs.list_runs(workspace):
            runs.request_stop(run)  # nothing of this test trains later
        for fd in held:
            runs.unlock(fd)
