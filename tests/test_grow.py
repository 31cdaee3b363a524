"""Growing a finished model: new classes and images, the head alone retrained, the old features reused."""
import json
import shutil

import numpy as np
import pytest

from tl_core.__main__ import main as cli
from tl_core.data.datasets import load_dataset
from tl_core.use.predict import Predictor
from tl_core.ops.runs import read_config, read_config_record, read_metrics


@pytest.fixture
def parent_and_new(sample_dir, tmp_path, monkeypatch):
    """A head run on four classes, and a folder with a fifth class plus more images of an old one."""
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    old, new = tmp_path / "old", tmp_path / "new"
    for name in ("Bag", "Trouser", "Sneaker", "Dress"):
        (old / name).mkdir(parents=True)
        for f in sorted((sample_dir / name).glob("*.png"))[:8]:
            shutil.copy(f, old / name / f.name)
    (new / "Sandal").mkdir(parents=True)
    for f in sorted((sample_dir / "Sandal").glob("*.png"))[:8]:
        shutil.copy(f, new / "Sandal" / f.name)
    (new / "Dress").mkdir()
    for f in sorted((sample_dir / "Dress").glob("*.png"))[8:11]:
        shutil.copy(f, new / "Dress" / f.name)
    parent = tmp_path / "ws" / "runs" / "parent"
    assert cli(["train", "--data", str(old), "--freeze", "head", "--image-size", "64", "--run-dir", str(parent)]) == 0
    return parent, new


def test_a_grown_model_knows_the_new_class_and_keeps_the_old_ones(parent_and_new, tmp_path, capsys):
    parent, new = parent_and_new
    capsys.readouterr()
    assert cli(["grow", str(parent), "--data", str(new)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    child = tmp_path / "ws" / "runs" / out[-1].split("/")[-1]
    config = read_config(child)
    assert config.parent_run == parent.name and config.freeze == "head"
    dataset = load_dataset(config.dataset_dir)
    assert dataset.counts() == {"Bag": 8, "Dress": 11, "Sandal": 8, "Sneaker": 8, "Trouser": 8}
    assert load_dataset(read_config(parent).dataset_dir).counts()["Dress"] == 8  # the old version stays
    old = read_config_record(child)["old_classes"]
    assert set(old["classes"]) == {"Bag", "Dress", "Sneaker", "Trouser"} and "old classes' mean recall" in out[-2]
    assert old["after"] >= old["before"] - 0.15
    predictor = Predictor(child)
    assert "Sandal" in predictor.classes
    sandal = sorted((new / "Sandal").glob("*.png"))[0]
    assert predictor.predict_files([sandal], top_k=1)[0]["top"][0]["label"] == "Sandal"
    assert read_metrics(child)["features"] == read_metrics(parent)["features"]


def test_a_single_new_class_is_enough_to_grow(parent_and_new, tmp_path):
    from tl_core.use.grow import grow

    parent, new = parent_and_new
    shutil.rmtree(new / "Dress")  # only the new class: a folder of one class is what growing takes most
    child = grow(parent, new)
    assert set(load_dataset(read_config(child).dataset_dir).classes) == {"Bag", "Dress", "Sandal", "Sneaker",
                                                                          "Trouser"}


def test_the_old_images_features_are_reused_not_recomputed(parent_and_new, tmp_path, monkeypatch):
    from tl_core.use import grow as grow_module

    parent, new = parent_and_new
    computed = []
    real = grow_module.decode_images
    monkeypatch.setattr(grow_module, "decode_images", lambda paths, *a, **k: computed.append(len(paths)) or
                        real(paths, *a, **k))
    grow_module.grow(parent, new)
    assert computed == [11]  # 8 Sandal + 3 Dress images: the 32 old ones come from the parent's cache
