"""Limits of a classroom server that must hold under concurrency: six processes submitting at once, guesses from
many addresses in many processes, new names per address, bounded name-giving, look-alike names, the secret,
quotas, file modes, and workers that never see the codes."""
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from tl_core.ops import attempts
from tl_core.ops import identities
from tl_core.ops import jobs
from tl_core.ops import runs
from tl_core.ops import spaces
from tl_core.config import RunConfig
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.data import datasets


def _submit_in_a_process(workspace: str, dataset_dir: str, barrier, results) -> None:
    os.environ["TL_STUDIO_HOME"] = workspace
    manager = jobs.JobManager(Path(workspace), background=False, worker_command=["false"])
    manager.tick = lambda: None  # nothing starts: every run stays queued
    queue = spaces.UserQueue(manager, spaces.Space(Path(workspace), "alice"))
    barrier.wait()
    try:
        queue.submit(RunConfig(dataset_dir=dataset_dir))
        results.put("queued")
    except ValueError as error:
        results.put(str(error))


def test_six_processes_submitting_at_once_queue_only_the_limit(_workspace, monkeypatch):
    monkeypatch.setenv(spaces.MAX_QUEUED_ENV, "2")
    alice = spaces.claim_name("alice", _workspace)
    data = datasets.ingest_files([(p.name, p.read_bytes(), c) for c in ("Bag", "Trouser")
                                  for p in sorted((SAMPLE_DIR / c).glob("*.png"))[:4]],
                                 workspace=alice.data_workspace)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    procs = [context.Process(target=_submit_in_a_process, args=(str(_workspace), str(data.root), barrier, results))
             for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes.count("queued") == 2, outcomes
    assert all("already have 2 runs" in o for o in outcomes if o != "queued")
    assert len(alice.active_runs()) == 2 and all(runs.read_owner(p) == "alice" for p in alice.my_runs())


def _guess_in_a_process(workspace: str, address: str, results) -> None:
    try:
        results.put(attempts.judge_code(address, False, Path(workspace)))
    except attempts.LockedOut as error:
        results.put(str(error))


def test_guesses_are_limited_per_address_and_for_the_whole_server_across_processes(_workspace, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_GUESSES_PER_ADDRESS", "3")
    monkeypatch.setenv("TL_STUDIO_GUESSES_PER_SERVER", "10")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    # 8 processes from one address: 3 guesses counted, 5 locked out
    procs = [context.Process(target=_guess_in_a_process, args=(str(_workspace), "10.0.0.1", results))
             for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes.count(False) == 3 and sum("from your address" in str(o) for o in outcomes) == 5, outcomes
    # 20 processes from 20 addresses: the server-wide limit (10) stops them after 7 more
    procs = [context.Process(target=_guess_in_a_process, args=(str(_workspace), f"10.0.1.{n}", results))
             for n in range(20)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes.count(False) == 7 and sum("on this server" in str(o) for o in outcomes) == 13, outcomes
    with pytest.raises(attempts.LockedOut):  # the right code waits too: a lockout tells nothing
        attempts.judge_code("10.0.2.1", True, _workspace)
    state = _workspace / "users" / ".attempts.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


def test_new_names_are_capped_per_address(_workspace, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_NAMES_PER_ADDRESS", "3")
    for _ in range(3):
        attempts.take_new_name("10.0.0.9", _workspace)
    with pytest.raises(attempts.LockedOut, match="Too many new names from your address"):
        attempts.take_new_name("10.0.0.9", _workspace)
    attempts.take_new_name("10.0.0.10", _workspace)  # another address is not held up


def test_given_name_gives_up_instead_of_looping(_workspace, monkeypatch):
    monkeypatch.setattr(spaces.secrets, "token_hex", lambda n: "0" * (2 * n))
    assert spaces.given_name(_workspace).user == "student-000000"
    with pytest.raises(ValueError, match="no free name"):
        spaces.given_name(_workspace)


def test_names_are_normalised_and_look_alikes_refused(_workspace):
    assert spaces.claim_name("\uff41lice", _workspace).user == "alice"  # full-width a: NFKC
    for look_alike in ("\u0410lice", "ALICE", "a1ice", "al\u0456ce", "\u0430lice ", "alice"):  # Cyrillic А, і, а
        with pytest.raises(ValueError, match="already someone's name"):
            spaces.claim_name(look_alike, _workspace)
    for teacherish in ("\uff54\uff45\uff41\uff43\uff48\uff45\uff52", "t\u0435acher", "TEACHER"):
        with pytest.raises(ValueError, match="not a name this class can use"):
            spaces.claim_name(teacherish, _workspace)
    assert spaces.claim_name("\u0410\u043d\u043d\u0430", _workspace).user == "\u0410\u043d\u043d\u0430"  # a Cyrillic name


def test_the_secret_is_whole_or_the_server_stops(_workspace):
    key = identities.server_secret(_workspace)
    path = _workspace / "users" / ".secret"
    assert len(key) == identities.SECRET_BYTES and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert identities.server_secret(_workspace) == key
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    path.write_bytes(b"")  # the first write failed half-way (disk full)
    with pytest.raises(identities.SecretError, match="0 bytes long"):
        identities.server_secret(_workspace)
    with pytest.raises(identities.SecretError):
        identities.create_session("alice", "code", workspace=_workspace)  # nothing is signed with it
    path.write_bytes(key[:16])
    with pytest.raises(identities.SecretError, match="16 bytes long"):
        identities.server_secret(_workspace)


def test_records_expire_and_end_with_the_teacher_code(_workspace, monkeypatch):
    monkeypatch.setenv(identities.SESSION_HOURS_ENV, "0.0000001")
    codes = {False: "tulip", True: "oak"}
    short = identities.create_session("alice", "tulip", workspace=_workspace)
    assert identities.find_session(short.token, codes, _workspace) is None  # expired
    forgotten = identities.create_session("alice", "tulip", workspace=_workspace)  # expired, never looked up
    records = _workspace / "users" / ".sessions"
    assert len(list(records.glob("*.json"))) == 1
    monkeypatch.delenv(identities.SESSION_HOURS_ENV)
    teacher = identities.create_session(spaces.TEACHER, "oak", teacher=True, workspace=_workspace)
    assert len(list(records.glob("*.json"))) == 1 and identities.find_session(forgotten.token, codes, _workspace) is None
    assert identities.find_session(teacher.token, codes, _workspace).teacher
    assert identities.find_session(teacher.token, {False: "tulip", True: "birch"}, _workspace) is None
    assert identities.find_session(teacher.token, codes, _workspace) is None  # gone for good
    student = identities.create_session("alice", "tulip", workspace=_workspace)
    new = identities.fresh_link("alice", "tulip", _workspace)
    assert identities.find_session(student.token, codes, _workspace) is None
    assert identities.find_session(new.token, codes, _workspace).user == "alice"
    assert not identities.knows_browser(new, "some-browser-key-000000", _workspace)  # the code, once


def test_quotas_refuse_with_the_limit_named(_workspace, monkeypatch):
    monkeypatch.setenv(spaces.MAX_DATASETS_ENV, "1")
    monkeypatch.setenv(spaces.QUOTA_MB_ENV, "1")
    alice = spaces.claim_name("alice", _workspace)
    alice.check_room(1000, new_dataset=True)
    datasets.ingest_files([(p.name, p.read_bytes(), c) for c in ("Bag", "Trouser")
                           for p in sorted((SAMPLE_DIR / c).glob("*.png"))[:4]], workspace=alice.data_workspace)
    with pytest.raises(spaces.QuotaExceeded, match="TL_STUDIO_MAX_DATASETS=1"):
        alice.check_room(0, new_dataset=True)
    with pytest.raises(spaces.QuotaExceeded, match="TL_STUDIO_QUOTA_MB=1"):
        alice.check_room(2 * 2**20)
    spaces.Space(_workspace, spaces.TEACHER, teacher=True).check_room(10 * 2**20, new_dataset=True)


def test_the_server_makes_private_files_and_workers_never_see_the_codes(_workspace, monkeypatch):
    from pages.ui import gate

    old = os.umask(0o022)
    try:
        gate.harden_process()
        alice = spaces.claim_name("alice", _workspace)
        data = datasets.ingest_files([(p.name, p.read_bytes(), c) for c in ("Bag", "Trouser")
                                      for p in sorted((SAMPLE_DIR / c).glob("*.png"))[:4]],
                                     workspace=alice.data_workspace)
        run_dir = runs.create_run(RunConfig(dataset_dir=str(data.root)), _workspace, owner="alice")
    finally:
        os.umask(old)
    for path in [*data.root.rglob("*"), *run_dir.rglob("*"), data.root, run_dir]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    monkeypatch.setenv("TL_STUDIO_ACCESS_CODE", "tulip")
    monkeypatch.setenv("TL_STUDIO_TEACHER_CODE", "oak")
    env = jobs.worker_environment()
    assert "TL_STUDIO_ACCESS_CODE" not in env and "TL_STUDIO_TEACHER_CODE" not in env and "PATH" in env
