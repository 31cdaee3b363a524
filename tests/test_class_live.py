"""The live Class page (pages/ui/class_live.py, tl_core.use.classroom): running runs' progress, dataset names
rather than ids, no Python None on screen, read again as runs move on; the gate tells the teacher where the
teacher code goes."""
import json
import time

import pytest

from apptest_support import plain
from tl_core.ops import runs, spaces
from tl_core.use import classroom, run_facts
from test_classroom import TEACHER_CODE, classroom_app, dataset_of, run_of, sign_in  # noqa: F401 (a fixture)
from pages.ui import nav


def epochs_done(run_dir, done: int, of: int = 5) -> None:
    start = time.time()
    events = [{"t": start, "event": "fit_start", "epochs": of}] + [
        {"t": start + e, "event": "epoch_end", "phase": "probe", "epoch": e, "seconds": 1.0, "val_acc": 0.5}
        for e in range(1, done + 1)]
    (runs.RunFolder(run_dir).events).write_text("".join(json.dumps(event) + "\n" for event in events))
    runs.write_status(run_dir, state="running", started=start)


def test_the_class_page_shows_progress_names_and_no_none_and_follows_the_runs(classroom_app, _workspace):
    alice, bob = spaces.claim_name("alice"), spaces.claim_name("bob")
    alice_run = run_of(alice, dataset_of(alice, name="alice's leaves"))
    bob_run = run_of(bob, dataset_of(bob, name="bob's stones"))
    epochs_done(alice_run, 2)
    at = sign_in("", code=TEACHER_CODE)
    at.switch_page(nav.CLASS_PAGE).run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["Training now"] == "1"
    progress = [plain(p.proto.text) for p in at.get("progress")]
    assert len(progress) == 1 and progress[0].startswith(f"alice · {run_facts.run_name(alice_run)}: Epoch 2 of 5 · about 3 s left")
    table = at.dataframe[0].value
    assert set(table["dataset"]) == {"alice's leaves", "bob's stones"}  # names, not 2026…-ids
    shown = table.drop(columns=["run_dir"]).astype(str).to_numpy().ravel().tolist()
    assert "None" not in shown and "nan" not in shown
    runs.write_status(alice_run, state="done", ended=time.time())  # the run ends: the next refresh says so
    at.run()
    assert {m.label: m.value for m in at.metric}["Training now"] == "0"
    row = at.dataframe[0].value.set_index("run_dir").loc[str(alice_run)]
    assert row["now"] == "finished" and row["progress"] == 1.0
    assert not at.get("progress")


def test_a_deleted_dataset_is_named_as_deleted_and_failures_say_why(_workspace):
    alice = spaces.claim_name("alice")
    dataset = dataset_of(alice, name="gone soon")
    run_dir = run_of(alice, dataset, "failed")
    runs.write_status(run_dir, state="failed", error="out of memory")
    import shutil

    shutil.rmtree(dataset.root)
    row = classroom.class_row(run_dir)
    assert row["dataset"] == f"{dataset.root.name} (deleted)" and row["now"] == "failed: out of memory"
    assert row["accuracy"] == classroom.MISSING and None not in row.values()


def test_the_sign_in_form_tells_the_teacher_where_the_teacher_code_goes(classroom_app):
    from apptest_support import open_page

    at = open_page()
    assert any("teacher code goes in the Access code box" in plain(c.value) for c in at.caption)


def test_a_student_who_lost_their_address_is_pointed_to_the_teacher_and_comes_back_to_their_runs(classroom_app,
                                                                                                  _workspace):
    from test_classroom import CODE, open_page_with_token
    from pages.ui import gate

    erin = sign_in("erin")
    erin_run = run_of(spaces.Space(_workspace, "erin"), dataset_of(spaces.Space(_workspace, "erin")), "done")
    again = sign_in("erin")  # a new browser, without her address: her name is hers, so it is refused, with the way back
    assert "ask your teacher for a fresh one" in plain(again.error[0].value)
    teacher = sign_in("", code=TEACHER_CODE)
    teacher.switch_page(nav.CLASS_PAGE).run()
    assert any("lost their address" in expander.label for expander in teacher.expander)
    teacher.selectbox(key="class_student").set_value("erin").run()
    teacher.button(key="class_fresh_link").click().run()
    token = teacher.code[0].value.split(f"{gate.IDENTITY_PARAM}=")[1]
    back = open_page_with_token(token)
    back.text_input(key="access_code_given").set_value(CODE)
    back.button[0].click().run()
    assert not back.exception, back.exception
    back.switch_page(nav.RESULTS_PAGE).run()
    assert back.selectbox(key="results_run").value == str(erin_run)  # her own run, as before
    assert erin.query_params[gate.IDENTITY_PARAM] != token
