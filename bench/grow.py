"""Add a class to a finished model: do the old classes keep their accuracy? Mean ± sd over draws.

For each draw of Fashion-MNIST (20 training images a class): a head run on 9 classes, then `grow` with
the 10th class (20 images). Test accuracy on the old 9 classes' 450 test images, before and after, and
the new class's recall; the wall of the grown run (only the new images pass through the backbone).

    python bench/grow.py [--draws 3]
"""
from __future__ import annotations

import argparse
import json
import os
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

from accuracy import write_draw  # noqa: E402
from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import decode_images, ingest_folder  # noqa: E402
from tl_core.use.grow import grow  # noqa: E402
from tl_core.use.predict import Predictor  # noqa: E402
from tl_core.ops.runs import create_run  # noqa: E402

NEW_CLASS = "Ankle-boot"


def accuracy_on(run_dir: Path, test_dir: Path, classes: list[str]) -> float:
    predictor = Predictor(run_dir)
    paths = [p for c in classes for p in sorted((test_dir / c).glob("*.png"))]
    truth = [c for c in classes for _ in sorted((test_dir / c).glob("*.png"))]
    pixels = decode_images(paths, predictor.size, predictor.preprocess["crop_pct"], predictor.preprocess["interpolation"])
    predicted = [predictor.classes[k] for k in predictor.predict_pixels(pixels).argmax(1)]
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "tl_accuracy_data"))
    args = parser.parse_args()
    rows = []
    for draw in range(args.draws):
        train_dir, test_dir = write_draw("fashion", 20, draw, Path(args.root))
        work = Path(tempfile.mkdtemp(prefix="tl_grow_"))
        os.environ["TL_STUDIO_HOME"] = str(work / "ws")
        old, new = work / "old", work / "new"
        shutil.copytree(train_dir, old)
        shutil.move(str(old / NEW_CLASS), new / NEW_CLASS)
        old_classes = sorted(p.name for p in old.iterdir())
        parent = create_run(RunConfig(dataset_dir=str(ingest_folder(old).root), freeze="head", seed=draw))
        worker.run(parent)
        start = time.perf_counter()
        child = grow(parent, new)
        worker.run(child)
        wall = time.perf_counter() - start
        row = {"before": accuracy_on(parent, test_dir, old_classes), "after": accuracy_on(child, test_dir, old_classes),
               "new_class_recall": accuracy_on(child, test_dir, [NEW_CLASS]), "grow_wall_s": wall}
        rows.append(row)
        print(f"draw {draw}: old classes {row['before']:.1%} → {row['after']:.1%}, new class recall "
              f"{row['new_class_recall']:.1%}, grown in {wall:.1f} s", flush=True)
    drop = [100 * (r["before"] - r["after"]) for r in rows]
    print(f"== old classes' accuracy drop: {statistics.mean(drop):.1f} ± {statistics.stdev(drop) if len(drop) > 1 else 0:.1f} "
          f"points; new class recall {100 * statistics.mean(r['new_class_recall'] for r in rows):.1f} %")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "grow-cpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    main()
