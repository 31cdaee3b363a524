"""Data that helps itself, measured: label errors found and dropped, class weighting under a 10:1 imbalance,
and active labelling against random labelling. Mean ± sd over draws of Fashion-MNIST, real EfficientNet-Lite0
weights (the default backbone, embedded), head-only runs (the default recipe's feature extraction).

Each draw (seed = draw number) makes its own training images from Fashion-MNIST's training split; the test
set is bench/data.py's fixed 500 test images (50 a class).

- noise: 30 images a class (300); 10 % of them (30) moved to a random other class. A run on the noisy set,
  its suspects (tl_core.quality.label_errors): precision and recall of the top 30 (as many as were injected) and of
  cleanlab's flagged set; test accuracy of the clean set's run, the noisy one's, and the ones trained after
  dropping the flagged images, or relabelling them to the suggested class (new dataset versions).
- imbalance: 60 images a class for 5 random classes, 6 for the other 5 (10:1). Test balanced accuracy and the
  small classes' mean recall, class weights off against on.
- active: 10 images a class labelled (100), a pool of 500 other training images, unlabelled. 20 of them
  labelled (their true labels: a perfect annotator) as suggested by tl_core.quality.active (uncertainty-weighted
  k-center), as the 20 least sure (uncertainty alone), or at random; test accuracy of each run.

    python bench/dataq.py [--draws 3] [--parts noise,imbalance,active]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from data import bench_folders, write_fashion_mnist_folder  # noqa: E402
from tl_core.quality import active, label_errors
from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import decode_images, ingest_folder, load_dataset  # noqa: E402
from tl_core.data.datasets.unlabelled import ingest_unlabelled_folder  # noqa: E402
from tl_core.fit.metrics import classification_metrics  # noqa: E402
from tl_core.use.predict import Predictor  # noqa: E402
from tl_core.ops.runs import create_run  # noqa: E402
from tl_core.data.sample_data import FASHION_CLASSES  # noqa: E402

NOISE, NOISE_PER_CLASS = 0.10, 30
BIG, SMALL = 60, 6
LABELLED_PER_CLASS, POOL_PER_CLASS, TO_LABEL = 10, 50, 20
# Every run here trains the head only: its body is the frozen pretrained one, so the test images' features depend
# only on what the head reads (last layer or every stage) and are computed once a draw: (workspace, kind) → features.
_TEST_FEATURES: dict = {}


def fit(dataset_dir: Path | str, seed: int, **settings) -> Path:
    run_dir = create_run(RunConfig(dataset_dir=str(dataset_dir), freeze="head", seed=seed, **settings))
    worker.run(run_dir)
    return run_dir


@torch.inference_mode()
def _test_features(predictor: Predictor, paths: list[Path]) -> torch.Tensor:
    key = (os.environ["TL_STUDIO_HOME"], predictor.preprocess.get("features", "last"), predictor.size)
    if key not in _TEST_FEATURES:
        pixels = decode_images(paths, predictor.size, predictor.preprocess["crop_pct"],
                               predictor.preprocess["interpolation"])
        model = predictor.model
        _TEST_FEATURES[key] = torch.cat([model.forward_head(model.forward_features(predictor.normalize(
            pixels[i:i + 64])), pre_logits=True).float() for i in range(0, len(pixels), 64)])
        # The shortcut must predict what the run's model predicts.
        assert torch.allclose(model.get_classifier()(_TEST_FEATURES[key][:16]).softmax(1),
                              predictor.predict_pixels(pixels[:16]), atol=1e-4)
    return _TEST_FEATURES[key]


@torch.inference_mode()
def test_scores(run_dir: Path, test_dir: Path, small: list[str] = ()) -> dict:
    """Accuracy, balanced accuracy and the `small` classes' mean recall on the fixed test images."""
    predictor = Predictor(run_dir)
    paths = [p for c in FASHION_CLASSES for p in sorted((test_dir / c).glob("*.png"))]
    truth = [predictor.classes.index(p.parent.name) for p in paths]
    predicted = predictor.model.get_classifier()(_test_features(predictor, paths)).argmax(1).tolist()
    metrics = classification_metrics(truth, predicted, predictor.classes)
    scores = {"acc": metrics["accuracy"], "balanced_acc": metrics["balanced_accuracy"]}
    if small:
        scores["small_recall"] = statistics.mean(metrics["per_class"][c]["recall"] for c in small)
    return scores


def noise(draw: int, work: Path, test_dir: Path) -> dict:
    clean = write_fashion_mnist_folder(work / "clean", "train", per_class=NOISE_PER_CLASS, seed=100 + draw)
    noisy = Path(shutil.copytree(clean, work / "noisy"))
    rng = random.Random(draw)
    files = sorted(noisy.glob("*/*.png"))
    flipped = set()
    for path in rng.sample(files, round(NOISE * len(files))):
        wrong = rng.choice([c for c in FASHION_CLASSES if c != path.parent.name])
        path.rename(noisy / wrong / f"noisy_{path.name}")
        flipped.add(f"noisy_{path.name}")
    clean_run = fit(ingest_folder(clean).root, draw)
    noisy_run = fit(ingest_folder(noisy).root, draw)
    ranked = label_errors.judge(noisy_run)["images"]
    flagged = [image["path"] for image in ranked if image["flagged"]]
    top = [Path(image["path"]).name for image in ranked[:len(flipped)]]
    hits = sum(Path(path).name in flipped for path in flagged)
    cleaned = label_errors.fix_labels(noisy_run, drop=flagged)["dataset_dir"]
    cleaned_run = fit(cleaned.root, draw)
    relabelled = label_errors.fix_labels(noisy_run, relabel={image["path"]: image["suggested"] for image in ranked
                                                             if image["flagged"]})["dataset_dir"]
    relabelled_run = fit(relabelled.root, draw)
    return {"injected": len(flipped), "flagged": len(flagged),
            "top_k_precision": sum(name in flipped for name in top) / len(top),
            "flagged_precision": hits / max(len(flagged), 1), "flagged_recall": hits / len(flipped),
            "acc_clean": test_scores(clean_run, test_dir)["acc"], "acc_noisy": test_scores(noisy_run, test_dir)["acc"],
            "acc_dropped": test_scores(cleaned_run, test_dir)["acc"],
            "acc_relabelled": test_scores(relabelled_run, test_dir)["acc"]}


def imbalance(draw: int, work: Path, test_dir: Path) -> dict:
    small = sorted(random.Random(draw).sample(FASHION_CLASSES, 5))
    data = write_fashion_mnist_folder(work / "imbalanced", "train", per_class=BIG, seed=200 + draw)
    for name in small:
        for extra in sorted((data / name).iterdir())[SMALL:]:
            extra.unlink()
    root = ingest_folder(data).root
    row = {"small_classes": small}
    for setting in ("off", "on"):
        scores = test_scores(fit(root, draw, class_weights=setting), test_dir, small)
        row[f"balanced_acc_{setting}"], row[f"small_recall_{setting}"] = scores["balanced_acc"], scores["small_recall"]
    return row


def active_labelling(draw: int, work: Path, test_dir: Path) -> dict:
    labelled = write_fashion_mnist_folder(work / "labelled", "train", per_class=LABELLED_PER_CLASS, seed=300 + draw)
    pool_dir = write_fashion_mnist_folder(work / "pool", "train", per_class=POOL_PER_CLASS, seed=300 + draw,
                                          skip_per_class=LABELLED_PER_CLASS)
    truth = {path.name: path.parent.name for path in pool_dir.glob("*/*.png")}  # the perfect annotator
    pool = ingest_unlabelled_folder(pool_dir)
    dataset = ingest_folder(labelled)
    base = fit(dataset.root, draw)
    row = {"acc_base": test_scores(base, test_dir)["acc"]}
    picks = {"suggested": [s["path"] for s in active.suggest(base, pool, k=TO_LABEL)["suggestions"]],
             "uncertain": [s["path"] for s in active.suggest(base, pool, k=TO_LABEL, choice="uncertain")["suggestions"]],
             "random": [str(p) for p in random.Random(draw).sample(pool.paths(), TO_LABEL)]}
    for how, paths in picks.items():
        version = active.add_labelled(dataset, [(path, truth[Path(path).name]) for path in paths])
        row[f"acc_{how}"] = test_scores(fit(version.root, draw), test_dir)["acc"]
        row[f"classes_{how}"] = len({truth[Path(path).name] for path in paths})
    return row


PARTS = {"noise": noise, "imbalance": imbalance, "active": active_labelling}


def summary(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: (statistics.mean(r[k] for r in rows), statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0)
            for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "tl_dataq"))
    args = parser.parse_args()
    _, test_dir = bench_folders(Path(args.root) / "fixed")
    results = {}
    _TEST_FEATURES.clear()
    for part in args.parts.split(","):
        rows = []
        for draw in range(args.draws):
            work = Path(tempfile.mkdtemp(prefix=f"tl_dataq_{part}_{draw}_"))
            os.environ["TL_STUDIO_HOME"] = str(work / "ws")
            start = time.perf_counter()
            row = PARTS[part](draw, work, test_dir)
            row["wall_s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"{part} draw {draw}: " + json.dumps(row), flush=True)
            shutil.rmtree(work, ignore_errors=True)
        results[part] = {"rows": rows, "summary": summary(rows)}
        print(f"== {part}: " + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in results[part]["summary"].items()),
              flush=True)
        (HERE / "results").mkdir(exist_ok=True)
        saved = HERE / "results" / "dataq-cpu.json"  # after each part: the parts can be run one at a time
        earlier = json.loads(saved.read_text()) if saved.exists() else {}
        saved.write_text(json.dumps({**earlier, **results}, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    main()
