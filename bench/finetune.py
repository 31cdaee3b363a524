"""Does fine-tuning work, and does it beat the probe? Mean and spread over several random draws.

For each draw of Fashion-MNIST (20 training images a class, a different seed each), the same 500
test images (50 a class) score three sets of weights of every recipe:
- probe: the head fitted on frozen features (the phase every fine-tune starts from),
- tuned: the weights at the end of the fine-tune phase (what fine-tuning itself reached),
- kept:  what the run saved (the best validation epoch of either phase).
It also prints the largest training loss logged in the fine-tune phase, and any restart notice.

    python bench/finetune.py [--draws 3] [--recipes all,top-2] [--lrs 1e-4,3e-4]
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

import torch  # noqa: E402

from tl_core import worker  # noqa: E402
from tl_core.fit.callbacks import Callback, _changeable_state  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import decode_images, ingest_folder  # noqa: E402
from tl_core.use.predict import Predictor  # noqa: E402
from tl_core.ops.runs import create_run  # noqa: E402
from tl_core.data.sample_data import fashion_mnist_available, write_fashion_mnist_folder  # noqa: E402

RECIPES = {  # name: RunConfig changes
    "all": dict(freeze="all", epochs=5),
    "top-2": dict(freeze="top-2", epochs=5),
    "top-2+light": dict(freeze="top-2", epochs=8, augment="light"),
    "all+light": dict(freeze="all", epochs=8, augment="light"),
}


class _PhaseWeights(Callback):
    """Keeps the weights at the end of each phase, and the largest fine-tune batch loss."""

    def __init__(self):
        self.last = {}
        self.max_finetune_loss = 0.0
        self.notices = []

    def on_epoch_end(self, info, fit):
        self.last[info["phase"]] = _changeable_state(fit.model)

    def on_batch_end(self, info, fit):
        if info.get("phase") == "finetune":
            self.max_finetune_loss = max(self.max_finetune_loss, info["loss"])

    def on_notice(self, info, fit):
        if info.get("kind") == "diverged":
            self.notices.append(info["message"])


def _test_set(test_dir: Path, predictor: Predictor):
    paths, labels = [], []
    for k, name in enumerate(predictor.classes):
        for f in sorted((test_dir / name).glob("*.png")):
            paths.append(f)
            labels.append(k)
    pixels = decode_images(paths, predictor.size, predictor.preprocess["crop_pct"], predictor.preprocess["interpolation"])
    return pixels, torch.tensor(labels)


def _accuracy(predictor: Predictor, state: dict | None, pixels, labels) -> float:
    if state is not None:
        predictor.model.load_state_dict(state, strict=False)
    return (predictor.predict_pixels(pixels).argmax(1) == labels).float().mean().item()


def run_recipe(changes: dict, train_dir: Path, test_dir: Path) -> dict:
    os.environ["TL_STUDIO_HOME"] = tempfile.mkdtemp(prefix="tl_bench_ft_")
    dataset = ingest_folder(train_dir)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), device="cpu", **changes))
    phases = _PhaseWeights()
    start = time.perf_counter()
    metrics = worker.run(run_dir, extra_callbacks=[phases])
    wall = time.perf_counter() - start
    predictor = Predictor(run_dir)
    pixels, labels = _test_set(test_dir, predictor)
    kept = _accuracy(predictor, None, pixels, labels)
    return {"wall_s": round(wall, 1), "kept": kept, "kept_phase": metrics["kept"]["phase"],
            "probe": _accuracy(predictor, phases.last.get("probe"), pixels, labels),
            "tuned": _accuracy(predictor, phases.last.get("finetune"), pixels, labels),
            "max_finetune_loss": phases.max_finetune_loss, "restarts": phases.notices}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1%} ± {sd:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--recipes", default="all,top-2")
    parser.add_argument("--lrs", default="", help="comma-separated learning rates (default: the plan's own)")
    parser.add_argument("--data", default=None, help="where to write the Fashion-MNIST folders")
    args = parser.parse_args()
    if not fashion_mnist_available():
        sys.exit("bench needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    root = Path(args.data or tempfile.mkdtemp(prefix="tl_bench_draws_"))
    test_dir = root / "test"
    if not test_dir.exists():
        write_fashion_mnist_folder(test_dir, "test", per_class=50, seed=99)
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [None]
    results = []
    for name in args.recipes.split(","):
        for lr in lrs:
            rows = []
            for draw in range(args.draws):
                train_dir = root / f"train{draw}"
                if not train_dir.exists():
                    write_fashion_mnist_folder(train_dir, "train", per_class=20, seed=draw)
                row = run_recipe({**RECIPES[name], "lr": lr, "seed": draw}, train_dir, test_dir)
                rows.append(row)
                print(f"  {name} lr={lr} draw {draw}: probe {row['probe']:.1%} tuned {row['tuned']:.1%} "
                      f"kept {row['kept']:.1%} ({row['kept_phase']}) max loss {row['max_finetune_loss']:.2f} "
                      f"{row['wall_s']} s {'; '.join(row['restarts'])}", flush=True)
            summary = {"recipe": name, "lr": lr, "draws": rows,
                       **{k: _mean_sd([r[k] for r in rows]) for k in ("probe", "tuned", "kept")},
                       "max_finetune_loss": max(r["max_finetune_loss"] for r in rows)}
            results.append(summary)
            print(f"{name:12s} lr={lr}: probe {summary['probe']} | tuned {summary['tuned']} | kept {summary['kept']} "
                  f"| max fine-tune loss {summary['max_finetune_loss']:.2f}", flush=True)
    out = HERE / "results" / f"finetune-cpu-{args.recipes.replace(',', '_')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
