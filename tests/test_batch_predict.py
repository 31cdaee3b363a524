"""Many pictures at once on the Predict page: zips opened safely, a table of predictions with 'looks like none of
these', and its CSV (tl_core.use.batch, pages/ui/batch_predict.py)."""
import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_core.anomaly.synthetic import good_image
from pages.ui.batch_predict import DETAILED
from tl_core.ops import runs
from tl_core.use import batch

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")
KNOWN = ("Trouser", "Bag", "Sneaker", "Dress")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def a_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_gives_its_pictures_and_says_what_it_refused():
    data = a_zip({"a/one.png": b"1", "../evil.png": b"2", "__MACOSX/._one.png": b"3", "two.png": b"4"})
    pictures, refused = batch.zip_pictures(data, "set.zip", max_pictures=1)
    assert pictures == [("a/one.png", b"1")]
    assert {r["name"] for r in refused} == {"../evil.png", "two.png"}  # an escaping path; one past the limit
    assert "outside" in next(r["reason"] for r in refused if r["name"] == "../evil.png")


def test_rows_and_their_csv_hold_every_picture_and_quote_formula_names():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    rows = batch.prediction_rows(["=cmd|calc.png", "b.png"], probs, ["x", "y", "z"], np.array([0.1, 0.9]),
                                 np.array([False, True]))
    assert [(r["predicted"], r["second"], r["unlike_training"]) for r in rows] == [("x", "y", False), ("z", "y", True)]
    read = list(csv.DictReader(io.StringIO(batch.rows_csv(rows).decode())))
    assert [r["file"] for r in read] == ["'=cmd|calc.png", "b.png"] and read[1]["probability"] == "0.6"
    unmeasured = batch.prediction_rows(["c.png"], probs[:1], ["x", "y", "z"])
    assert list(csv.DictReader(io.StringIO(batch.rows_csv(unmeasured).decode())))[0]["distance"] == ""


def test_the_predict_page_tables_a_zip_flags_the_brick_wall_and_offers_the_csv(head_run, fashion_test_dir, _workspace):
    from apptest_support import open_page

    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    members = {f"{name}/{path.name}": path.read_bytes() for name in KNOWN
               for path in sorted((fashion_test_dir / name).glob("*.png"))[:3]}
    members["wall.png"] = png(good_image("brick", np.random.default_rng(0), size=128))
    at = open_page("pages/6_Predict.py", predict_run=str(run_dir))
    at.file_uploader(key="predict_uploads").set_value(("mixed.zip", a_zip(members), "application/zip")).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == 13 and table["file"].tolist()[-1] == "mixed.zip/wall.png"
    flagged = dict(zip(table["file"], table["unlike_training"]))
    assert flagged["mixed.zip/wall.png"] and sum(flagged.values()) <= 2
    assert len(at.get("download_button")) == 1
    assert any("99%" in caption.value for caption in at.caption)
    assert len(at.subheader) == 1 + DETAILED  # "13 pictures", then the first DETAILED one by one with heat maps


def test_one_picture_of_a_wall_is_said_to_look_like_none_of_the_classes(head_run, _workspace):
    from apptest_support import open_page, plain

    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    at = open_page("pages/6_Predict.py", predict_run=str(run_dir))
    wall = png(good_image("gravel", np.random.default_rng(1), size=128))
    at.file_uploader(key="predict_uploads").set_value(("wall.png", wall, "image/png")).run()
    assert not at.exception, at.exception
    assert [plain(w.value) for w in at.warning] == ["wall.png: looks like none of the classes; its answer below is a "
                                                    "guess."]
    assert not at.dataframe  # one picture: no table, its answer and heat map as before
    assert len(at.subheader) == 1 and plain(at.subheader[0].value).startswith("wall.png: ")


def test_without_the_training_pictures_predict_says_none_of_these_is_not_measured(head_run, _workspace, tmp_path):
    from apptest_support import open_page

    from tl_core.ops.storage import atomic_write_json

    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    record = json.loads(runs.RunFolder(run_dir).config.read_text())
    record["config"]["dataset_dir"] = str(tmp_path / "deleted dataset")
    atomic_write_json(runs.RunFolder(run_dir).config, record)
    at = open_page("pages/6_Predict.py", predict_run=str(run_dir))
    picture = png(good_image("brick", np.random.default_rng(0), size=96))
    at.file_uploader(key="predict_uploads").set_value(("a.png", picture, "image/png")).run()
    assert not at.exception, at.exception
    assert any("is not measured" in caption.value for caption in at.caption)
    assert not at.warning and len(at.subheader) == 1  # the answer still comes
