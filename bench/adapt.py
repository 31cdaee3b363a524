"""Domain adaptation on real shifts: target test accuracy of source-only against AdaBN, alignment and DANN.

For each shift of bench/shifts.py and each draw (seed): 20 labelled source images a class (Fashion-MNIST
train split), 30 unlabelled target images a class (train split, disjoint, shifted, class folders dropped),
500 labelled target test images (test split, seed 99, shifted; used only to measure). Four real runs
through tl_core.worker, the numbers read from each run's metrics.json "target":
- head + adapt=adabn: the probe's source-only target accuracy, and after AdaBN;
- head + adapt=align: after feature alignment;
- head + adapt=auto: what the shift meter and the quick check (lowest target entropy, no labels) chose;
- top-2 fine-tune (5 epochs), adapt=none: fine-tuned source-only; the same with adapt=dann.

    python bench/adapt.py [--draws 3] [--shifts none,blur_lowres,tint_contrast] [--methods adabn,align,auto,finetune,dann] [--redo]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from shifts import SHIFTS, shifted_copy  # noqa: E402

from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import ingest_folder  # noqa: E402
from tl_core.data.datasets.unlabelled import ingest_unlabelled_folder  # noqa: E402
from tl_core.ops.runs import create_run  # noqa: E402
from tl_core.data.sample_data import fashion_mnist_available, write_fashion_mnist_folder  # noqa: E402

COLUMNS = ("source_only", "adabn", "align", "auto", "finetune_source_only", "dann")
METHODS = ("adabn", "align", "auto", "finetune", "dann")


def folders(root: Path, shift: str, draw: int) -> tuple[Path, Path, Path]:
    source, target_raw = root / f"source{draw}", root / f"target_raw{draw}"
    test_raw = root / "test_raw"
    if not source.exists():
        write_fashion_mnist_folder(source, "train", per_class=20, seed=draw)
        write_fashion_mnist_folder(target_raw, "train", per_class=30, seed=draw, skip_per_class=20)
    if not test_raw.exists():
        write_fashion_mnist_folder(test_raw, "test", per_class=50, seed=99)
    target, test = root / f"{shift}_target{draw}", root / f"{shift}_test"
    if not target.exists():
        shifted_copy(target_raw, target, shift, flat=True)
    if not test.exists():
        shifted_copy(test_raw, test, shift)
    return source, target, test


def one_run(source, target, test, draw: int, size: int, **changes) -> dict:
    config = RunConfig(dataset_dir=str(source.root), target_dir=str(target.root), target_test_dir=str(test.root),
                       image_size=size, seed=draw, device="cpu", **changes)
    metrics = worker.run(create_run(config))
    return {"val_acc": metrics["val_acc"], **metrics["target"]}


def draw_row(root: Path, shift: str, draw: int, size: int, methods: list[str]) -> dict:
    source_dir, target_dir, test_dir = folders(root, shift, draw)
    source, target, test = ingest_folder(source_dir), ingest_unlabelled_folder(target_dir), ingest_folder(test_dir)
    row = {"shift": shift, "draw": draw}
    if "adabn" in methods:  # also the probe's source-only accuracy
        adabn = one_run(source, target, test, draw, size, adapt="adabn")
        row.update(pad=adabn["shift"]["pad"], val_acc_probe=adabn["val_acc"],
                   source_only=adabn["source_only"]["target_acc"], adabn=adabn["adapted"]["target_acc"])
    if "align" in methods:
        row["align"] = one_run(source, target, test, draw, size, adapt="align")["adapted"]["target_acc"]
    if "auto" in methods:
        auto = one_run(source, target, test, draw, size, adapt="auto")
        row["auto"] = (auto.get("adapted") or auto["source_only"])["target_acc"]
        row["auto_chose"] = auto["method"]
    if "finetune" in methods:
        tuned = one_run(source, target, test, draw, size, adapt="none", freeze="top-2", epochs=5)
        row["finetune_source_only"] = tuned["source_only"]["target_acc"]
    if "dann" in methods:
        row["dann"] = one_run(source, target, test, draw, size, adapt="dann", freeze="top-2",
                              epochs=5)["adapted"]["target_acc"]
    return row


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1%} ± {sd:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--shifts", default=",".join(SHIFTS))
    parser.add_argument("--size", type=int, default=64, help="input size in px (Fashion-MNIST is 28 px)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--methods", default=",".join(METHODS), help="runs to (re)do; others are kept from the json")
    parser.add_argument("--redo", action="store_true", help="run --methods again even where the json has them")
    parser.add_argument("--out", default=str(HERE / "results" / "adapt-cpu.json"))
    args = parser.parse_args()
    if not fashion_mnist_available():
        sys.exit("bench needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    root = Path(args.data or tempfile.mkdtemp(prefix="tl_bench_adapt_"))
    os.environ["TL_STUDIO_HOME"] = str(root / "workspace")
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    methods = args.methods.split(",")
    for shift in args.shifts.split(","):
        for draw in range(args.draws):
            done = next((r for r in rows if r["shift"] == shift and r["draw"] == draw), None)
            if done is None:
                done = {"shift": shift, "draw": draw}
                rows.append(done)
            todo = [m for m in methods if args.redo or {"finetune": "finetune_source_only"}.get(m, m) not in done]
            if todo:
                done.update(draw_row(root, shift, draw, args.size, todo))
                out.write_text(json.dumps(rows, indent=2))
                print(json.dumps(done), flush=True)
    print("| shift | proxy A-distance | " + " | ".join(COLUMNS) + " |")
    for shift in args.shifts.split(","):
        mine = [r for r in rows if r["shift"] == shift and "pad" in r]
        print(f"| {shift} | {statistics.mean(r['pad'] for r in mine):.2f} | "
              + " | ".join(_mean_sd([r[c] for r in mine if c in r]) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
