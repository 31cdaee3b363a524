"""Testing a finished classifier on a held-out set it never saw: in the engine (tl_core.use.heldout) and on the
Results page (pages/ui/heldout_test.py)."""
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tl_core.ops import runs
from tl_core.use import heldout

KNOWN = ("Trouser", "Bag", "Sneaker", "Dress")  # head_run's classes (conftest.small_sample)


def zipped(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def own_run(head_run, _workspace) -> Path:
    return Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))


def test_a_held_out_folder_gives_accuracy_its_interval_confusion_and_mistakes(own_run, fashion_test_dir):
    result = heldout.test_heldout(own_run, fashion_test_dir, label="fashion test")
    assert result["images"] == 10 * len(KNOWN)  # 10 per class; the 6 classes the model lacks are named, not tested
    unknown = {s["name"] for s in result["skipped"] if s["reason"] == "a class the model was not trained on"}
    assert len(unknown) == 6 and not unknown & set(KNOWN)
    confusion = result["confusion"]
    correct = sum(confusion[i][i] for i in range(len(confusion)))
    assert sum(map(sum, confusion)) == 40 and result["accuracy"] == pytest.approx(correct / 40)
    assert result["accuracy"] > 0.5  # 4 classes: chance is 25 %
    low, high = result["interval"]
    assert low < result["accuracy"] < high or result["accuracy"] in (low, high)
    assert len(result["mistakes"]) == 40 - correct
    for mistake in result["mistakes"]:
        assert mistake["label"] != mistake["predicted"] and heldout.mistake_picture(own_run, mistake).is_file()
    assert runs.read_heldout(own_run) == result
    assert result["in_training"] == 0  # the test split of Fashion-MNIST, not the bundled training sample


def test_a_zip_with_a_bad_file_and_training_pictures_says_both(own_run, small_sample, fashion_test_dir):
    data = zipped(small_sample, {"Bag/notes.png": b"not an image at all"})
    result = heldout.test_heldout(own_run, data, label="set.zip")
    assert result["images"] == 32
    assert any(s["name"].endswith("notes.png") for s in result["skipped"])  # refused with its reason, not dropped
    assert result["in_training"] == 32  # every picture was trained on: the page warns that the test flatters


def test_a_set_bigger_than_the_app_tests_is_sent_to_the_command_line(own_run, fashion_test_dir):
    with pytest.raises(ValueError, match="python -m tl_core evaluate"):
        heldout.test_heldout(own_run, fashion_test_dir, max_images=5)


pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def test_the_results_page_tests_an_uploaded_zip_and_shows_accuracy_confusion_and_mistakes(own_run, fashion_test_dir):
    from apptest_support import open_page, plain

    at = open_page("pages/5_Results.py", results_run=str(own_run))
    upload = at.file_uploader(key="heldout_zip")
    upload.set_value(("fashion test.zip", zipped(fashion_test_dir), "application/zip")).run()
    at.button(key="heldout_zip_test").click().run()
    assert not at.exception, at.exception
    result = runs.read_heldout(own_run)
    metrics = {metric.label: metric for metric in at.metric}
    assert metrics["Held-out accuracy"].value == f"{result['accuracy']:.1%}"
    low, high = result["interval"]  # written as every screen writes an interval (run_facts.interval_text)
    assert metrics["Held-out accuracy"].delta == f"95 %: {low:.1%}–{high:.1%}"
    assert metrics["Pictures tested"].value == "40"
    assert any(text.value == "Last test: fashion test.zip" for text in at.text)
    assert sum(text.value.endswith("a class the model was not trained on") for text in at.text) == 6
    captions = at.image[-1].captions if result["mistakes"] else []
    assert [plain(c) for c in captions] == [f"{m['name']}: {m['label']} → {m['predicted']} ({m['confidence']:.0%})"
                                            for m in result["mistakes"][:24]]


def test_uploaded_files_of_a_single_class_are_tested(own_run, fashion_test_dir):
    files = [(path.name, path.read_bytes(), "Bag") for path in sorted((fashion_test_dir / "Bag").glob("*.png"))]
    result = heldout.test_heldout(own_run, files, label="bags")
    assert result["images"] == 10 and result["per_class"]["Bag"]["support"] == 10
    assert result["confusion"][result["classes"].index("Bag")][result["classes"].index("Bag")] == round(
        10 * result["accuracy"])


def test_a_damaged_model_is_a_message_on_the_results_page_not_a_crash(own_run, fashion_test_dir):
    from apptest_support import open_page

    runs.RunFolder(own_run).weights.write_bytes(b"garbage")
    at = open_page("pages/5_Results.py", results_run=str(own_run))
    at.file_uploader(key="heldout_zip").set_value(("t.zip", zipped(fashion_test_dir), "application/zip")).run()
    at.button(key="heldout_zip_test").click().run()
    assert not at.exception, at.exception
    assert any("could not be tested" in error.value for error in at.error)
    assert runs.read_heldout(own_run) is None


def test_the_command_line_saves_a_big_test_for_the_results_page(own_run, fashion_test_dir, capsys):
    from tl_core.__main__ import main as cli

    assert cli(["evaluate", str(own_run), "--data", str(fashion_test_dir), "--save"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 40 and runs.read_heldout(own_run) == printed


def test_the_results_page_tests_an_uploaded_folder(own_run, fashion_test_dir):
    from apptest_support import open_page

    at = open_page("pages/5_Results.py", results_run=str(own_run))
    files = [(f"fashion/{name}/{path.name}", path.read_bytes(), "image/png") for name in ("Bag", "Dress")
             for path in sorted((fashion_test_dir / name).glob("*.png"))[:5]]
    at.file_uploader(key="heldout_folder").set_value(files).run()
    at.button(key="heldout_folder_test").click().run()
    assert not at.exception, at.exception
    result = runs.read_heldout(own_run)
    assert result["images"] == 10 and result["per_class"]["Bag"]["support"] == 5
    assert {metric.label: metric.value for metric in at.metric}["Pictures tested"] == "10"
