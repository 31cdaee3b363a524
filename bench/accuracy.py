"""Test accuracy of the recipes, mean ± sd over random draws, per data set and images a class.

Data sets (real images, installable here):
- fashion: Debian's dataset-fashion-mnist (28 × 28 grayscale product photos, unlike ImageNet's);
  training images drawn per draw from the training split, 50 test images a class from the test split.
- digits: scikit-learn's bundled UCI handwritten digits (8 × 8 grayscale scans, 1,797 images, CC BY 4.0):
  further still from ImageNet; each draw takes its training images, 50 a class of the rest are the test set.
Recipes: auto (the default Auto plan: candidates measured within 3x feature extraction's time),
head-auto (feature extraction; the probe picks last-layer or multi-layer features by cross-validation),
last (probe on last-layer features: the previous default), top-2+light (probe, then fine-tune the top
two groups with light augmentation, 8 epochs), and plain_full (the plain timm loop a user writes,
full fine-tune, 5 epochs; same weights, tf_efficientnet_lite0), and fastai (`fine_tune(6, freeze_epochs=2)`
on the same model and weights, its default augmentation; `pip install fastai` first: fastai is no
dependency of the app).

    python bench/accuracy.py --data fashion --shots 5,20,100 --draws 5 --recipes auto,last
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from compare import run_plain_loop, test_accuracy  # noqa: E402
from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import ingest_folder  # noqa: E402
from tl_core.ops.runs import create_run, read_config_record  # noqa: E402
from tl_core.data.sample_data import read_fashion_mnist  # noqa: E402

RECIPES = {
    "auto": dict(),  # the default: the Auto plan (freeze="auto", features="auto")
    "head-auto": dict(freeze="head"),  # feature extraction, the probe choosing last- or multi-layer features
    "last": dict(freeze="head", features="last"),
    "multi": dict(freeze="head", features="multi-layer"),
    "top-2+light": dict(freeze="top-2", epochs=8, augment="light"),
    "prototype": dict(freeze="head", head="prototype"),  # few-shot: nearest class mean
    "logistic": dict(freeze="head", head="logistic"),
}
TEST_PER_CLASS = 50


def _images(name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if name == "fashion":
        images, labels = read_fashion_mnist(split)
        return images, labels, ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                "Bag", "Ankle-boot"]
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    return images, digits.target, [str(k) for k in range(10)]


def write_draw(name: str, shots: int, draw: int, root: Path) -> tuple[Path, Path]:
    """(train, test) class folders: `shots` training images a class drawn with seed `draw`; a fixed test set."""
    train_dir, test_dir = root / f"{name}-{shots}-{draw}" / "train", root / f"{name}-test"
    if name == "fashion":
        pool, pool_labels, classes = _images(name, "train")
        test, test_labels, _ = _images(name, "test")
        test_pick = _pick(test_labels, TEST_PER_CLASS, np.random.default_rng(99))
    else:  # one split: the test images are fixed first, training images are drawn from the rest
        pool, pool_labels, classes = _images(name, "all")
        test_pick = _pick(pool_labels, TEST_PER_CLASS, np.random.default_rng(99))
        test, test_labels = pool, pool_labels
        keep = np.setdiff1d(np.arange(len(pool)), test_pick)
        pool, pool_labels = pool[keep], pool_labels[keep]
    train_pick = _pick(pool_labels, shots, np.random.default_rng(draw))
    if not test_dir.exists():
        _write(test[test_pick], test_labels[test_pick], classes, test_dir)
    if not train_dir.exists():
        _write(pool[train_pick], pool_labels[train_pick], classes, train_dir)
    return train_dir, test_dir


def _pick(labels: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                           for k in np.unique(labels)])


def _write(images, labels, classes, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp / classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp / classes[label] / f"{i:05d}.png")
    tmp.rename(dest)


def run_fastai(train_dir: Path, test_dir: Path, draw: int) -> dict:
    """fastai's fine_tune on the embedded Lite0: the timm model with its own head, split body | head."""
    from fastai.vision.all import (CrossEntropyLossFlat, ImageDataLoaders, Learner, Normalize, Resize, accuracy,
                                   aug_transforms, get_image_files, params, set_seed)

    from tl_core.models import backbones

    set_seed(draw)
    start = time.perf_counter()
    model = backbones.create_model("tf_efficientnet_lite0", 10, weights="embedded")
    config = backbones.data_config(model)
    dls = ImageDataLoaders.from_folder(train_dir, valid_pct=0.2, seed=draw, item_tfms=Resize(224), bs=32,
                                       num_workers=0, batch_tfms=[*aug_transforms(),
                                                                  Normalize.from_stats(config["mean"], config["std"])])
    head = model.get_classifier()
    body_params = [p for p in model.parameters() if all(p is not q for q in head.parameters())]
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    splitter=lambda m: [body_params, params(head)])
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(6, freeze_epochs=2)
    wall = time.perf_counter() - start
    files = get_image_files(test_dir)
    probs, _ = learn.get_preds(dl=dls.test_dl(files))
    truth = [dls.vocab.o2i[f.parent.name] for f in files]
    correct = sum(int(p.argmax()) == t for p, t in zip(probs, truth))
    return {"test_acc": correct / len(files), "wall_s": wall}


def run_recipe(recipe: str, train_dir: Path, test_dir: Path, draw: int) -> dict:
    start = time.perf_counter()
    if recipe == "fastai":
        return run_fastai(train_dir, test_dir, draw)
    if recipe == "plain_full":
        result = run_plain_loop(False, train_dir, test_dir, "cpu")
        return {"test_acc": result["test_acc"], "wall_s": result["wall_s"]}
    os.environ["TL_STUDIO_HOME"] = tempfile.mkdtemp(prefix=f"tl_acc_{recipe}_")
    dataset = ingest_folder(train_dir)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), seed=draw, **RECIPES[recipe]))
    metrics = worker.run(run_dir)
    wall = time.perf_counter() - start
    facts = read_config_record(run_dir)
    return {"test_acc": test_accuracy(run_dir, test_dir, "cpu"), "wall_s": wall, "val_acc": metrics["val_acc"],
            "features": metrics.get("features"), "head": metrics.get("head"), "kept": metrics["kept"]["phase"],
            "choice": (facts.get("features_choice") or {}).get("words")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="fashion", choices=["fashion", "digits"])
    parser.add_argument("--shots", default="5,20,100")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--recipes", default="auto,last")
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "tl_accuracy_data"))
    args = parser.parse_args()
    root = Path(args.root)
    out = HERE / "results" / f"accuracy-{args.data}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for shots in map(int, args.shots.split(",")):
        for recipe in args.recipes.split(","):
            rows = []
            for draw in range(args.draws):
                train_dir, test_dir = write_draw(args.data, shots, draw, root)
                rows.append(run_recipe(recipe, train_dir, test_dir, draw))
                print(f"{args.data} {shots}/class {recipe} draw {draw}: test {rows[-1]['test_acc']:.1%} "
                      f"({rows[-1]['wall_s']:.1f} s) {rows[-1].get('choice') or ''}", flush=True)
            accs = [100 * r["test_acc"] for r in rows]
            summary = {"mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "draws": rows}
            results[f"{shots}/{recipe}"] = summary
            print(f"== {args.data} {shots}/class {recipe}: {summary['mean']:.1f} ± {summary['sd']:.1f} % "
                  f"over {len(rows)} draws", flush=True)
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
