"""Few-shot: prototype heads from one image a class, leave-one-out validation, and what is said about it."""
import json
import shutil

import pytest
import torch

from tl_core.__main__ import main as cli
from tl_core.fit.prototypes import PrototypeFits, head_for
from tl_core.use.predict import Predictor
from tl_core.fit.run_data import RunData, with_cross_validation


def _features(seed=0, per_class=(3, 4, 2), dim=16):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    centres = torch.randn(len(per_class), dim, generator=g) * 3
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_prototypes_are_the_class_means_and_fold_into_a_linear_head():
    feats, labels = _features()
    fits = PrototypeFits(feats, labels, torch.ones(1, len(labels), dtype=torch.bool), 3)
    z = (feats - fits.mean[0]) / fits.std[0]
    for c in range(3):
        torch.testing.assert_close(fits.prototypes[0, c], z[labels == c].mean(0))
    for _ in range(3):
        fits.step()
    head = torch.nn.Linear(feats.shape[1], 3)
    fits.copy_to(head)
    folded = head(feats).log_softmax(1)
    direct = fits.logits()[0].log_softmax(1)
    torch.testing.assert_close(folded, direct, rtol=1e-4, atol=1e-4)  # the same probabilities, from raw features
    assert (folded.argmax(1) == torch.cdist(z, fits.prototypes[0]).argmin(1)).all()  # nearest class mean


def test_adding_a_class_moves_no_other_class_prototype():
    feats, labels = _features(per_class=(3, 4, 2))
    two = labels < 2
    before = PrototypeFits(feats[two], labels[two], torch.ones(1, int(two.sum()), dtype=torch.bool), 2)
    after = PrototypeFits(feats, labels, torch.ones(1, len(labels), dtype=torch.bool), 3)

    def raw(fits, c):  # the prototype in feature space: the class mean, whatever the standardisation
        return fits.prototypes[0, c] * fits.std[0] + fits.mean[0]
    for c in range(2):
        torch.testing.assert_close(raw(before, c), raw(after, c), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(raw(after, c), feats[labels == c].mean(0), rtol=1e-5, atol=1e-5)


def test_a_fold_without_a_class_never_predicts_it():
    feats, labels = _features(per_class=(1, 3, 3))
    masks = torch.ones(1, len(labels), dtype=torch.bool)
    masks[0, 0] = False  # the only image of class 0 held out
    fits = PrototypeFits(feats, labels, masks, 3)
    assert (fits.logits()[0].argmax(1) != 0).all()


def test_auto_picks_prototypes_only_for_very_small_classes():
    assert head_for("auto", [1, 5, 9]) == "prototype"
    assert head_for("auto", [6, 20]) == "logistic"
    assert head_for("logistic", [1, 1]) == "logistic" and head_for("prototype", [50, 50]) == "prototype"


def test_few_shot_sets_validate_by_leave_one_out_and_say_what_cannot_be():
    data = RunData(["a", "b", "c"], list("pqrstu"), [0, 0, 1, 1, 1, 2], [], [], "", {})
    loo = with_cross_validation(data, 0)
    assert loo.folds == [[i] for i in range(6)] and loo.val_idx == [0, 1, 2, 3, 4]  # image 5 is alone
    assert "leave-one-out" in loo.validation and "1 image alone in its class cannot be scored" in loo.validation
    ones = with_cross_validation(RunData(["a", "b"], ["p", "q"], [0, 1], [], [], "", {}), 0)
    assert ones.validation_method["kind"] == "none" and ones.folds is None
    assert "no validation possible" in ones.validation


def _one_image_a_class(sample_dir, dest, n=1):
    for name in ("Bag", "Trouser", "Sneaker"):
        (dest / name).mkdir(parents=True)
        for f in sorted((sample_dir / name).glob("*.png"))[:n]:
            shutil.copy(f, dest / name / f.name)
    return dest


def test_one_image_a_class_trains_and_predicts(sample_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    data = _one_image_a_class(sample_dir, tmp_path / "one")
    run_dir = tmp_path / "ws" / "runs" / "one"
    assert cli(["train", "--data", str(data), "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    assert "not validated" in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["head"] == "prototype" and metrics["validation_method"]["kind"] == "none"
    predictor = Predictor(run_dir)
    for path in sorted(data.rglob("*.png")):  # each training image is its own class's prototype
        assert predictor.predict_files([path], top_k=1)[0]["top"][0]["label"] == path.parent.name
    unseen = sorted((sample_dir / "Trouser").glob("*.png"))[5]
    assert predictor.predict_files([unseen], top_k=1)[0]["top"][0]["label"] == "Trouser"


def test_two_images_a_class_validate_by_leave_one_out(sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    data = _one_image_a_class(sample_dir, tmp_path / "two", n=2)
    run_dir = tmp_path / "ws" / "runs" / "two"
    assert cli(["train", "--data", str(data), "--image-size", "64", "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validation_method"]["leave_one_out"] and metrics["n_val"] == 6
    assert metrics["val_acc"] == pytest.approx(sum(r[i] for i, r in enumerate(metrics["confusion"])) / 6)


def test_the_ranking_puts_random_weights_below_the_pretrained_ones(sample_dir, tmp_path, monkeypatch):
    from tl_core.data.datasets import ingest_folder
    from tl_core.plan.ranking import rank

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    dataset = ingest_folder(sample_dir)  # 300 real images: random weights' features are weak, not useless
    result = rank(dataset.root, [("tf_efficientnet_lite0", "none"), ("tf_efficientnet_lite0", "embedded")],
                  image_size=96)
    assert [r["weights"] for r in result["rows"]] == ["embedded", "none"]
    assert result["rows"][0]["acc"] > result["rows"][1]["acc"] + 0.03  # measured: 0.87 against 0.79
    assert result["compares"] == "backbones" and "ranks first" in result["words"]


def test_with_one_backbone_the_ranking_compares_image_sizes(small_sample, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    assert cli(["rank", "--data", str(small_sample), "--backbones", "tf_efficientnet_lite0:embedded"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compares"] == "image sizes" and sorted(r["image_size"] for r in result["rows"]) == [160, 224, 288]
    assert "image sizes are compared instead" in result["words"]


def test_the_live_loop_learns_each_picture_at_once(sample_dir):
    from tl_core.data.datasets import open_image
    from tl_core.fit.prototypes import LiveClassifier

    live = LiveClassifier()
    assert live.predict(open_image((sample_dir / "Bag").glob("*.png").__next__().read_bytes())) == []
    shots = {name: sorted((sample_dir / name).glob("*.png")) for name in ("Bag", "Trouser", "Sneaker")}
    for name, files in shots.items():
        live.add(open_image(files[0].read_bytes()), name)
    before = [f.clone() for f in live.feats]
    for name, files in shots.items():  # unseen pictures of each class
        guess = live.predict(open_image(files[4].read_bytes()))
        assert guess[0]["label"] == name and abs(sum(g["prob"] for g in guess) - 1) < 1e-5
    live.add(open_image(sorted((sample_dir / "Coat").glob("*.png"))[0].read_bytes()), "Coat")
    assert live.classes == ["Bag", "Trouser", "Sneaker", "Coat"]
    assert all(torch.equal(a, b) for a, b in zip(before, live.feats))  # a new class leaves the others as they were
