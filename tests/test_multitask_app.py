"""A multi-task run on the Results page: the tasks side by side, one task's classes below, and the comparison
with a model per task that says whether sharing one backbone helped."""
import shutil

import pytest

from apptest_support import open_page, plain
from tl_core.ops import runs
from tl_core.config import RunConfig
from tl_core.data.datasets.labels_table import ingest_labelled_folder
from tl_core.data.sample_data import write_fashion_task_table
from tl_core.worker import run

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def test_results_show_each_task_and_compare_sharing_with_a_model_per_task(small_sample, tmp_path, fake_jobs):
    data = tmp_path / "data"
    shutil.copytree(small_sample, data)
    dataset = ingest_labelled_folder(data, write_fashion_task_table(data))
    run_dir = runs.create_run(RunConfig(dataset_dir=str(dataset.root), backbone="test_efficientnet", weights="none",
                                        freeze="head", features="last", epochs=3, image_size=64))
    run(run_dir)
    at = open_page("pages/5_Results.py", run_dir=str(run_dir))
    assert not at.exception
    assert {m.label for m in at.metric} >= {"Mean task score"}
    assert at.dataframe[0].value["task"].tolist() == ["category", "group", "tags"]
    task = at.selectbox(key="results_task")
    task.set_value("group").run()
    per_class = next(frame.value for frame in at.dataframe if "class" in frame.value.columns)
    assert per_class["class"].tolist() == ["bag", "bottom", "dress", "footwear"]

    at.button(key="start_separate").click().run()
    submitted = fake_jobs[-1].submitted
    assert [c.extra["only_task"] for c in submitted] == ["category", "group", "tags"]
    assert any("separate models are training" in plain(info.value) for info in at.info)
    for twin in runs.list_runs():
        if runs.read_status(twin).get("state") == "queued":
            run(twin)  # the three single-task runs, for real
    at.run()
    assert not at.exception
    verdicts = [plain(box.value) for box in (*at.success, *at.warning, *at.info)]
    assert any(v.startswith(("Sharing helped", "Negative transfer", "No clear difference")) for v in verdicts)
    sharing = next(frame.value for frame in at.dataframe if "shared" in frame.value.columns)
    assert sharing["task"].tolist() == ["category", "group", "tags"]


def test_the_data_page_audits_a_table_dataset_per_task(small_sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_sample, data)
    table = write_fashion_task_table(data)
    lines = table.read_text().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([first[0], first[1], "", first[3]])  # one image without a group
    table.write_text("\n".join(lines) + "\n")
    dataset = ingest_labelled_folder(data, table)
    at = open_page("pages/2_Data.py", dataset_dir=str(dataset.root))
    assert not at.exception
    audit = next(frame.value for frame in at.dataframe if "task" in frame.value.columns)
    assert audit["task"].tolist() == ["category", "group", "tags"]
    assert audit["without a label"].tolist() == [0, 1, 0]
    assert any("1 image without a label for group" in plain(w.value) for w in at.warning)
