"""The caches that spare a rerun from reading unchanged files never show stale data: a file rewritten (even at
once, at the same size), appended to, added or removed is read again on the next call, and the pages show a new
run, a run's new scores and a new dataset on their next rerun."""
import json
import shutil
from pathlib import Path

import pytest

from apptest_support import open_page
from pages.ui import cached
from tl_core.data import datasets
from tl_core.ops import filecache, runs, words
from tl_core.ops.storage import atomic_write_json
from tl_core.use import run_facts

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def test_a_stamp_changes_with_every_write(tmp_path):
    reads = []

    @filecache.keyed_on(lambda path: filecache.file_stamp(path))
    def read(path):
        reads.append(path)
        return json.loads(Path(path).read_text())

    path = tmp_path / "a.json"
    atomic_write_json(path, {"n": 1})
    assert read(path) == {"n": 1} and read(path) == {"n": 1} and len(reads) == 1  # unchanged: read once
    atomic_write_json(path, {"n": 2})  # at once, the same size: a new inode
    assert read(path) == {"n": 2}
    with open(path, "a") as f:  # appended: a new size
        f.write(" ")
    assert read(path) == {"n": 2} and len(reads) == 3
    path.unlink()
    with pytest.raises(FileNotFoundError):
        read(path)
    got = read.__wrapped__  # the plain function is kept for whoever needs it
    assert callable(got)


def test_a_cached_result_is_the_callers_own(tmp_path):
    @filecache.keyed_on(lambda path: filecache.file_stamp(path))
    def read(path):
        return json.loads(Path(path).read_text())

    path = tmp_path / "a.json"
    atomic_write_json(path, {"items": [1, 2]})
    read(path)["items"].append(3)  # a caller changing its result changes nobody else's
    assert read(path) == {"items": [1, 2]}


def test_a_run_s_events_are_each_callers_own(head_run):
    events = runs.read_events(head_run)
    first = next(event for event in events if event["event"] == "epoch_end")
    first["val_acc"] = -1.0  # a page changing an event, or a nested value of one, changes no other page's events
    events[-1].setdefault("details", {})["changed"] = True
    events.append({"event": "made_up"})
    again = runs.read_events(head_run)
    assert next(event for event in again if event["event"] == "epoch_end")["val_acc"] != -1.0
    assert "changed" not in again[-1].get("details", {}) and again[-1]["event"] != "made_up"


def test_a_folder_stamp_sees_entries_come_and_go(tmp_path):
    before = filecache.folder_stamp(tmp_path)
    (tmp_path / "x").write_text("1")
    added = filecache.folder_stamp(tmp_path)
    (tmp_path / "x").unlink()
    assert before != added and filecache.folder_stamp(tmp_path) == before
    assert filecache.folder_stamp(tmp_path / "missing") == ()


def test_run_readers_see_a_run_change(head_run, _workspace):
    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    metrics = runs.read_metrics(run_dir)
    assert words.summarize(run_dir)["val_acc"] == metrics["val_acc"] and runs.damage(run_dir) == []
    atomic_write_json(runs.RunFolder(run_dir).metrics, {**metrics, "val_acc": 0.123})
    assert runs.read_metrics(run_dir)["val_acc"] == 0.123 and words.summarize(run_dir)["val_acc"] == 0.123
    runs.write_status(run_dir, state="failed", error="out of memory")
    assert words.summarize(run_dir)["state"] == "failed"
    assert runs.read_status(run_dir)["error"] == "out of memory"
    runs.write_status(run_dir, state="queued", error=None)  # the same size of file, a moment later
    assert runs.read_status(run_dir)["state"] == "queued"
    assert runs.read_owner(run_dir) is None
    atomic_write_json(runs.RunFolder(run_dir).owner, {"owner": "ada"})
    assert runs.read_owner(run_dir) == "ada"
    runs.RunFolder(run_dir).name.write_text('{"name": "renamed"}')
    assert run_facts.run_name(run_dir) == "renamed"
    with open(runs.RunFolder(run_dir).events, "ab") as f:
        f.write(b"garbage\n")
    assert runs.damage(run_dir) and "events.jsonl" in words.summarize(run_dir)["damaged"]
    before = len(runs.read_events(run_dir))
    with open(runs.RunFolder(run_dir).events, "ab") as f:
        f.write(json.dumps({"event": "note", "text": "more"}).encode() + b"\n")
    assert len(runs.read_events(run_dir)) == before + 1


def test_a_cached_figure_is_drawn_again_when_its_run_changes(head_run, _workspace):
    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    drawn = []
    first = cached.figure(run_dir, lambda: drawn.append(1) or "figure 1", "test")
    assert cached.figure(run_dir, lambda: drawn.append(1) or "figure 2", "test") == first == "figure 1"
    runs.write_status(run_dir, state="done")
    assert cached.figure(run_dir, lambda: "figure 3", "test") == "figure 3" and drawn == [1]
    (run_dir / "predictions.csv").write_text("path,label,predicted,confidence,correct\n")
    assert cached.from_folder(lambda folder: (Path(folder) / "predictions.csv").read_text().count("\n"),
                              run_dir) == 1


def test_the_runs_page_shows_a_new_run_and_new_scores_on_its_next_rerun(head_run, _workspace):
    first = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    at = open_page("pages/8_Runs.py")
    at.run()  # warm: every cache filled
    table = at.dataframe[0].value
    assert list(table["run_id"]) == [first.name]
    second = Path(shutil.copytree(head_run, _workspace / "runs" / "20260102-000000-second"))
    atomic_write_json(runs.RunFolder(first).metrics, {**runs.read_metrics(first), "val_acc": 0.0625})
    at.run()
    table = at.dataframe[0].value
    assert list(table["run_id"]) == [second.name, first.name]
    assert table.set_index("run_id").loc[first.name, "val_acc"] == 0.0625


def test_students_who_took_the_same_images_share_their_thumbnails(small_sample, _workspace):
    mine, theirs = datasets.ingest_folder(small_sample, name="mine"), datasets.ingest_folder(small_sample, name="theirs")
    strips = [cached.thumbnail_strip([d.root / item["path"] for item in d.items[:4]], 72,
                                     hashes=[item["sha256"] for item in d.items[:4]]) for d in (mine, theirs)]
    assert mine.root != theirs.root and strips[0] is strips[1] and strips[0].startswith(b"\x89PNG")


def test_the_data_page_shows_a_dataset_made_again(small_sample, _workspace, tmp_path):
    dataset = datasets.ingest_folder(small_sample, name="mine")
    at = open_page("pages/2_Data.py", dataset_dir=str(dataset.root))
    at.run()
    assert [m.value for m in at.metric][:2] == ["32", "4"]
    fewer = tmp_path / "fewer"
    shutil.copytree(small_sample, fewer)
    shutil.rmtree(fewer / "Bag")
    again = datasets.ingest_folder(fewer, name="fewer")
    at.session_state["dataset_dir"] = str(again.root)
    at.run()
    assert [m.value for m in at.metric][:2] == ["24", "3"]


def test_only_a_real_server_freezes_its_heap():
    import gc

    from pages.ui import heap

    frozen = gc.get_freeze_count()
    heap.freeze_what_is_loaded()  # no browser's request here (a test process): nothing is frozen for good
    assert gc.get_freeze_count() == frozen
