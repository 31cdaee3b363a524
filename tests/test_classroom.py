"""A classroom on one server: per-user spaces, ownership enforced in tl_core, identity and choices that survive
a reload, a fair queue, one worker per GPU."""
import shutil
import sys
import time
from pathlib import Path

import pytest

from apptest_support import open_page, plain
from pages.ui import gate, nav
from tl_core.models import backbones
from tl_core.data import datasets
from tl_core.ops import identities
from tl_core.ops import jobs
from tl_core.ops import runs
from tl_core.ops import spaces
from tl_core.config import RunConfig
from tl_core.data.sample_data import SAMPLE_DIR

CODE, TEACHER_CODE = "tulip-42", "oak-7"


def dataset_of(space: spaces.Space, classes=("Bag", "Trouser"), per_class=4, name="mine") -> datasets.Dataset:
    files = [(path.name, path.read_bytes(), label) for label in classes
             for path in sorted((SAMPLE_DIR / label).glob("*.png"))[:per_class]]
    return datasets.ingest_files(files, name=name, workspace=space.data_workspace)


def run_of(space: spaces.Space, dataset: datasets.Dataset, state: str = "queued") -> Path:
    run_dir = runs.create_run(RunConfig(dataset_dir=str(dataset.root), backbone=backbones.EMBEDDED_MODEL),
                              space.workspace, owner=space.owner)
    if state != "queued":
        runs.write_status(run_dir, state=state)
    return run_dir


@pytest.fixture
def classroom(_workspace):
    alice, bob = spaces.claim_name("alice", _workspace), spaces.claim_name("bob", _workspace)
    teacher = spaces.Space(_workspace, spaces.TEACHER, teacher=True)
    return alice, bob, teacher


# ---------------------------------------------------------------- ownership, in the engine

def test_a_student_sees_and_touches_only_their_own_runs(classroom):
    alice, bob, teacher = classroom
    alice_run = run_of(alice, dataset_of(alice), "done")
    bob_run = run_of(bob, dataset_of(bob))
    assert alice.my_runs() == [alice_run] and alice.visible_runs() == [alice_run]
    assert bob.my_runs() == [bob_run]
    for guess in (bob_run.name, str(bob_run), f"../runs/{bob_run.name}", "../../users/bob"):
        with pytest.raises(spaces.NotYours):
            alice.run(guess)
    with pytest.raises(spaces.NotYours):
        alice.delete_run(bob_run.name)
    with pytest.raises(spaces.NotYours):
        alice.cancel_run(bob_run.name)
    assert bob_run.is_dir() and not runs.stop_requested(bob_run)
    # the words are the same for a run that does not exist: guessing tells nothing
    with pytest.raises(spaces.NotYours, match="no run of yours has this id"):
        alice.run("20990101-000000-nothing-0000")
    alice.delete_run(alice_run.name)
    assert not alice_run.exists()


def test_the_teacher_sees_every_run_and_cancels_any(classroom):
    alice, bob, teacher = classroom
    alice_run, bob_run = run_of(alice, dataset_of(alice)), run_of(bob, dataset_of(bob))
    assert set(teacher.visible_runs()) == {alice_run, bob_run} and teacher.my_runs() == []
    teacher.cancel_run(bob_run.name)
    assert runs.read_status(bob_run)["state"] == "cancelled"


def test_datasets_are_per_user_and_cannot_be_borrowed(classroom):
    alice, bob, teacher = classroom
    alice_data, bob_data = dataset_of(alice), dataset_of(bob)
    assert [d.root for d in datasets.list_datasets(alice.data_workspace)] == [alice_data.root]
    assert not alice.owns_dataset(bob_data.root) and alice.owns_dataset(alice_data.root)
    assert teacher.owns_dataset(bob_data.root)
    with pytest.raises(spaces.NotYours):
        alice.delete_dataset(bob_data.root)
    queue = spaces.UserQueue(jobs.JobManager(alice.workspace, background=False), alice)
    with pytest.raises(spaces.NotYours):  # training on a guessed path of someone else's data
        queue.submit(RunConfig(dataset_dir=str(bob_data.root)))
    assert runs.list_runs(alice.workspace) == []
    waiting = run_of(alice, alice_data)
    with pytest.raises(ValueError, match="waiting for or training on this dataset"):
        alice.delete_dataset(alice_data.root)
    alice.cancel_run(waiting)
    alice.delete_dataset(alice_data.root)
    assert not alice_data.root.exists() and bob_data.root.is_dir()


def test_a_student_may_queue_only_a_few_runs(classroom, monkeypatch):
    alice, bob, _ = classroom
    monkeypatch.setenv(spaces.MAX_QUEUED_ENV, "2")
    manager = jobs.JobManager(alice.workspace, background=False, worker_command=["false"])
    manager.tick = lambda: None  # nothing starts: every run stays queued
    queue, data = spaces.UserQueue(manager, alice), dataset_of(alice)
    first = queue.submit(RunConfig(dataset_dir=str(data.root)))
    queue.submit(RunConfig(dataset_dir=str(data.root)))
    with pytest.raises(ValueError, match="already have 2 runs waiting or training"):
        queue.submit(RunConfig(dataset_dir=str(data.root)))
    assert runs.read_owner(first) == "alice" and len(alice.my_runs()) == 2
    queue.cancel(first)  # one stopped: room for another
    queue.submit(RunConfig(dataset_dir=str(data.root)))
    assert len(alice.active_runs()) == 2


def test_laptop_use_has_no_names_and_owns_everything(_workspace):
    laptop = spaces.Space.laptop()
    data = datasets.ingest_files([(p.name, p.read_bytes(), c) for c in ("Bag", "Trouser")
                                  for p in sorted((SAMPLE_DIR / c).glob("*.png"))[:4]])
    run_dir = runs.create_run(RunConfig(dataset_dir=str(data.root)))
    assert laptop.data_workspace == _workspace and laptop.my_runs() == [run_dir] and laptop.owns_dataset(data.root)
    assert runs.read_owner(run_dir) is None and not (_workspace / "users").exists()


# ---------------------------------------------------------------- identity

def test_sign_in_links_cannot_be_forged_and_end_with_the_access_code(classroom):
    # was: HMAC name tokens (spaces.identity_token), the same at every sign-in, forever; now a random id
    # naming a record that expires, is tied to the code, and can be ended (issue 20)
    alice, *_ = classroom
    codes = {False: CODE, True: TEACHER_CODE}
    session = identities.create_session("alice", CODE, browser_key="k" * 24)
    assert identities.find_session(session.token, codes).user == "alice"
    assert identities.find_session(session.token, {False: "another code", True: TEACHER_CODE}) is None
    assert identities.find_session(session.token, codes) is None  # deleted when its code changed
    session = identities.create_session("alice", CODE)
    for forged in (session.token[:-1], session.token.swapcase(), session.token + "x", "alice", "", "../" * 9):
        assert identities.find_session(forged, codes) is None
    with pytest.raises(ValueError, match="already someone's name"):
        spaces.claim_name("alice")
    for bad in ("../bob", "teacher", "", "a" * 25, ".hidden", "bob\x00", "a/b", "\uff54\uff45\uff41\uff43\uff48\uff45\uff52"):
        with pytest.raises(ValueError):
            spaces.claim_name(bad)


# ---------------------------------------------------------------- the queue

def test_the_queue_is_round_robin_between_users_and_first_come_within_one():
    queued = [(Path("a1"), "alice", 1.0), (Path("a2"), "alice", 2.0), (Path("a3"), "alice", 3.0),
              (Path("b1"), "bob", 4.0), (Path("c1"), "carol", 5.0), (Path("b2"), "bob", 6.0)]
    assert [p.name for p in jobs.fair_order(queued)] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    # alice already has a run training: bob's and carol's first runs go before her next
    assert [p.name for p in jobs.fair_order(queued, {"alice": 1})] == ["b1", "c1", "a1", "b2", "a2", "a3"]


def test_the_job_manager_starts_runs_in_the_fair_order(classroom):
    alice, bob, _ = classroom
    alice_data, bob_data = dataset_of(alice), dataset_of(bob)
    first, second = run_of(alice, alice_data), run_of(alice, alice_data)
    time.sleep(0.01)
    bobs = run_of(bob, bob_data)
    manager = jobs.JobManager(alice.workspace, background=False, slots=1)
    assert manager.queue() == [first, bobs, second]
    assert manager.queue_position(bobs) == 2


def test_the_expected_start_counts_rounds_of_the_slots_at_a_typical_run_length(classroom):
    from tl_core.ops.storage import atomic_write_json

    alice, bob, _ = classroom
    data = dataset_of(alice)
    for wall_s in (10.0, 30.0, 20.0):
        done = run_of(alice, data, "done")
        atomic_write_json(runs.RunFolder(done).metrics, {"wall_s": wall_s, "classes": []})
    waiting = [run_of(bob, dataset_of(bob)) for _ in range(3)]
    manager = jobs.JobManager(alice.workspace, background=False, slots=2)
    assert [manager.expected_wait(p) for p in waiting] == [20.0, 20.0, 40.0]  # median 20 s; 2 slots a round
    runs.write_status(waiting[0], state="running")
    assert manager.expected_wait(waiting[0]) is None


WORKER = """import os, sys, time, pathlib
pathlib.Path(sys.argv[1], "..", "..", "gpus-" + pathlib.Path(sys.argv[1]).name).resolve().write_text(
    os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
time.sleep(30)
"""


def test_one_worker_per_gpu_each_seeing_only_its_own(classroom, monkeypatch):
    alice, bob, _ = classroom
    monkeypatch.delenv("TL_STUDIO_SLOTS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(jobs, "gpu_count", lambda: 2)
    assert jobs.default_slots() == 2
    data = dataset_of(alice)
    run_dirs = [run_of(alice, data) for _ in range(3)]
    manager = jobs.JobManager(alice.workspace, background=False, worker_command=[sys.executable, "-c", WORKER])
    try:
        manager.tick()
        started = [p for p in run_dirs if runs.read_status(p)["state"] == "running"]
        assert len(started) == 2 and len(manager.workers) == 2  # never more workers than GPUs
        seen = []
        for run_dir in started:
            marker = alice.workspace / f"gpus-{run_dir.name}"
            for _ in range(200):
                if marker.exists() and marker.read_text():
                    break
                time.sleep(0.05)
            seen.append(marker.read_text())
        assert sorted(seen) == ["0", "1"]
    finally:
        manager.close(kill=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # the server was given two GPUs: workers get those
    assert jobs.gpu_ids() == ["2", "5"] and jobs.worker_gpu(1, jobs.gpu_ids()) == "5"
    assert jobs.worker_gpu(3, ["0", "1"]) == "1" and jobs.worker_gpu(0, []) is None


# ---------------------------------------------------------------- the app

@pytest.fixture
def classroom_app(monkeypatch, navigation_pages, fake_jobs):
    monkeypatch.setenv(gate.ACCESS_CODE_ENV, CODE)
    monkeypatch.setenv(gate.TEACHER_CODE_ENV, TEACHER_CODE)


def sign_in(name: str, code: str = CODE):
    at = open_page()
    at.text_input(key="access_code_given").set_value(code)
    at.text_input(key="user_name_given").set_value(name)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def test_a_new_student_never_sees_another_students_run_as_theirs(classroom_app, _workspace):
    alice = spaces.claim_name("alice")
    alice_run = run_of(alice, dataset_of(alice), "running")
    at = sign_in("bob")
    assert "bob" in plain(" ".join(c.value for c in at.sidebar.caption))
    bob = spaces.Space(_workspace, "bob")
    bob_data = dataset_of(bob)
    at.session_state["dataset_dir"] = str(bob_data.root)
    at.switch_page("pages/4_Train.py").run()
    assert not at.exception and at.session_state["run_dir"] is None  # alice's live run is not bob's
    assert not [b for b in at.button if b.label == "Stop"]
    at.switch_page("pages/8_Runs.py").run()
    assert alice_run.name not in " ".join(str(df.value) for df in at.dataframe)
    # a guessed run id in the session (or a crafted state file) is dropped, never shown
    at.session_state["results_run"] = str(alice_run)
    at.switch_page("pages/5_Results.py").run()
    shown = [*at.subheader, *at.title, *at.markdown, *at.info, *at.selectbox]
    assert not at.exception and alice_run.name not in plain(" ".join(str(e.value) for e in shown))
    assert "No runs yet" in plain(at.info[0].value)


def test_a_student_deletes_their_own_dataset_on_the_data_page(classroom_app, _workspace):
    at = sign_in("erin")
    erin = spaces.Space(_workspace, "erin")
    kept, gone = dataset_of(erin, name="kept"), dataset_of(erin, classes=("Sneaker", "Dress"), name="gone")
    at.session_state["dataset_dir"] = str(gone.root)
    at.session_state["data_source_tab"] = ":material/history: Earlier datasets"  # drawn only while it is open
    at.switch_page("pages/2_Data.py").run()
    at.selectbox(key="earlier_dataset").set_value(str(gone.root)).run()
    at.button(key="delete_earlier").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not gone.root.exists() and kept.root.is_dir()
    assert at.session_state["dataset_dir"] is None
    assert [option.split(" (")[0] for option in at.selectbox(key="earlier_dataset").options] == ["kept"]


def test_a_reload_finds_the_same_user_and_their_choices(classroom_app, _workspace):
    at = sign_in("carol")
    token = at.query_params[gate.IDENTITY_PARAM]
    carol = spaces.Space(_workspace, "carol")
    data = dataset_of(carol)
    at.session_state["dataset_dir"] = str(data.root)
    at.session_state["freeze"] = "top2"
    at.session_state["epochs"] = 7
    at.switch_page("pages/4_Train.py").run()
    at.button(key="start_training").click().run()
    run_dir = at.session_state["run_dir"]
    assert not at.error, [e.value for e in at.error]
    assert run_dir and runs.read_owner(Path(run_dir)) == "carol"

    # A new browser session with the same address (AppTest keeps no cookie: a browser that never gave the code
    # for this link) must give the access code, and then is the same user with the same choices. Was: the
    # address alone signed in (issue 20: an address seen on a projector was the account).
    reloaded = open_page_with_token(token)
    assert [t.label for t in reloaded.text_input] == ["Access code"]
    reloaded.text_input(key="access_code_given").set_value(CODE)
    reloaded.button[0].click().run()
    assert not reloaded.exception, reloaded.exception
    assert "carol" in plain(" ".join(c.value for c in reloaded.sidebar.caption))
    assert reloaded.session_state["dataset_dir"] == str(data.root)
    assert reloaded.session_state["freeze"] == "top2" and reloaded.session_state["epochs"] == 7
    assert reloaded.session_state["run_dir"] == run_dir
    forged = open_page_with_token(token[::-1])
    assert [t.label for t in forged.text_input] == ["Access code", "Your name"]


def open_page_with_token(token: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(nav.__file__).resolve().parents[2] / "app.py"), default_timeout=90)
    at.query_params[gate.IDENTITY_PARAM] = token
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_teacher_lists_every_run_and_cancels_one(classroom_app, _workspace):
    alice, bob = spaces.claim_name("alice"), spaces.claim_name("bob")
    alice_run, bob_run = run_of(alice, dataset_of(alice)), run_of(bob, dataset_of(bob))
    at = sign_in("", code=TEACHER_CODE)
    at.switch_page(nav.CLASS_PAGE).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Class"
    table = at.dataframe[0].value
    from tl_core.use.run_facts import run_name

    assert "None" not in table.astype(str).to_numpy().ravel().tolist()
    assert set(table["dataset"]) == {"mine"}  # the names the students gave, not ids
    assert set(table["student"]) == {"alice", "bob"} and set(table["run"]) == {run_name(alice_run), run_name(bob_run)}
    at.selectbox(key="class_chosen").set_value(str(bob_run)).run()
    at.button(key="class_cancel").click().run()
    assert runs.read_status(bob_run)["state"] == "cancelled" and runs.read_status(alice_run)["state"] == "queued"
    runs.write_status(alice_run, state="done")
    at.run()
    at.selectbox(key="class_chosen").set_value(str(alice_run)).run()
    at.button(key="class_project").click().run()
    assert not at.exception and at.session_state["results_run"] == str(alice_run)
    assert at.title[0].value == "5 · Results" and at.selectbox(key="results_run").value == str(alice_run)
    student = sign_in("dave")
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # not registered for a student
        student.switch_page(nav.CLASS_PAGE)


@pytest.mark.usefixtures("navigation_pages", "fake_jobs")
def test_on_a_laptop_a_reload_keeps_the_choices_and_asks_nothing(monkeypatch, _workspace):
    monkeypatch.delenv(gate.ACCESS_CODE_ENV, raising=False)
    data = datasets.ingest_files([(p.name, p.read_bytes(), c) for c in ("Bag", "Trouser")
                                  for p in sorted((SAMPLE_DIR / c).glob("*.png"))[:4]])
    at = open_page("pages/4_Train.py", dataset_dir=str(data.root), freeze="all", lr_plan="all", lr=3e-4)
    assert not [t for t in at.text_input if t.label == "Access code"]
    at.button(key="start_training").click().run()
    run_dir = at.session_state["run_dir"]
    assert run_dir and runs.read_owner(Path(run_dir)) is None
    reloaded = open_page("pages/4_Train.py")  # a new browser session: the address carries nothing
    assert reloaded.session_state["dataset_dir"] == str(data.root) and reloaded.session_state["freeze"] == "all"
    assert reloaded.session_state["run_dir"] == run_dir and reloaded.session_state["lr"] == 3e-4
    shutil.rmtree(data.root)  # deleted since: a restored choice that no longer holds is dropped
    again = open_page("pages/4_Train.py")
    assert again.session_state["dataset_dir"] is None
    assert "Choose your images first" in plain(again.info[0].value)


def test_the_teacher_signs_a_student_out_and_gives_a_fresh_link(classroom_app, _workspace):
    erin = sign_in("erin")
    old_link = erin.query_params[gate.IDENTITY_PARAM]
    teacher = sign_in("", code=TEACHER_CODE)
    teacher.switch_page(nav.CLASS_PAGE).run()
    teacher.selectbox(key="class_student").set_value("erin").run()
    teacher.button(key="class_sign_out").click().run()
    assert not teacher.exception, teacher.exception
    erin.run()  # erin's next click: signed out
    assert [t.label for t in erin.text_input] == ["Access code", "Your name"]
    teacher.button(key="class_fresh_link").click().run()
    link = teacher.code[0].value
    new_token = link.split(f"{gate.IDENTITY_PARAM}=")[1]
    assert new_token != old_link
    assert identities.find_session(old_link, {False: CODE, True: TEACHER_CODE}) is None
    again = open_page_with_token(new_token)  # the new link, with the access code: erin again, her space
    again.text_input(key="access_code_given").set_value(CODE)
    again.button[0].click().run()
    assert "erin" in plain(" ".join(c.value for c in again.sidebar.caption))
