"""One multi-task model against one model per task, on the same images, backbone, plan and budget.

Fashion-MNIST (Debian's dataset-fashion-mnist), 20 training images a class (200) and 50 test images a class
(500), every image labelled three ways (tl_core.data.sample_data): its category (10 classes), a coarser group
(top/dress/bottom/footwear/bag) and tags (multi-label: upper-body, long-sleeves, warm, feet, ...). For each
draw of training images and each plan, one run trains a head per task on one backbone; three runs train one
task each; all are scored on the same test images (accuracy, or mAP for tags). Walls are each arm's whole
training time, cold feature cache at the start of each arm.

    python bench/multitask.py [--draws 3] [--plans head,top-2] [--epochs 5] [--root DIR] [--device cuda]

--root keeps the images (written once, reused: a machine without the Debian package can run on a copy).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tl_core.data.sample_data import write_fashion_mnist_folder, write_fashion_task_table  # noqa: E402

TASKS = ("category", "group", "tags")


def one_arm(workspace: Path, train: Path, test: Path, plan: str, epochs: int, only: str | None,
            device: str = "auto") -> tuple[dict, float]:
    """({task: test score}, training seconds) of one run (all tasks, or `only` one)."""
    os.environ["TL_STUDIO_HOME"] = str(workspace)
    from tl_core.ops import runs
    from tl_core.config import RunConfig
    from tl_core.data.datasets.labels_table import ingest_labelled_or_reuse_folder
    from tl_core.use.predict import evaluate_table
    from tl_core.worker import run

    dataset = ingest_labelled_or_reuse_folder(train, "labels.csv")
    config = RunConfig(dataset_dir=str(dataset.root), freeze=plan, epochs=epochs, device=device,
                       only_task=only)
    run_dir = runs.create_run(config)
    t0 = time.time()
    run(run_dir)
    wall = time.time() - t0
    report = evaluate_table(run_dir, test, "labels.csv")
    return {name: task["score"] for name, task in report["tasks"].items()}, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--plans", default="head,top-2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--root", default=None, help="where the images are (or are written once)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write-only", action="store_true", help="write the images under --root and stop")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="tl_multitask_"))
    test = root / "test"
    if not (test / "labels.csv").exists():
        write_fashion_mnist_folder(test, "test", per_class=50, seed=0)
        write_fashion_task_table(test)
    for draw in range(args.draws):
        train = root / f"train{draw}"
        if not (train / "labels.csv").exists():
            write_fashion_mnist_folder(train, "train", per_class=args.per_class, seed=100 + draw)
            write_fashion_task_table(train)
    if args.write_only:
        return
    workspaces = Path(tempfile.mkdtemp(prefix="tl_multitask_ws_"))
    results = []
    for draw in range(args.draws):
        train = root / f"train{draw}"
        for plan in args.plans.split(","):
            shared, shared_wall = one_arm(workspaces / f"{draw}-{plan}-shared", train, test, plan, args.epochs, None,
                                          args.device)
            alone, alone_wall = {}, 0.0
            for task in TASKS:  # one workspace for the three: they share the feature cache, as in the app
                score, wall = one_arm(workspaces / f"{draw}-{plan}-alone", train, test, plan, args.epochs, task,
                                      args.device)
                alone[task] = score[task]
                alone_wall += wall
            row = {"draw": draw, "plan": plan, "shared": shared, "alone": alone, "shared_wall": shared_wall,
                   "alone_wall": alone_wall}
            results.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"| plan | task | one shared model | a model per task | shared − alone (pts) |")
    print("|---|---|---|---|---|")
    for plan in args.plans.split(","):
        rows = [r for r in results if r["plan"] == plan]
        for task in TASKS:
            a = [r["shared"][task] * 100 for r in rows]
            b = [r["alone"][task] * 100 for r in rows]
            d = [x - y for x, y in zip(a, b)]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            print(f"| {plan} | {task} | {statistics.mean(a):.1f} ± {sd(a):.1f} | {statistics.mean(b):.1f} ± {sd(b):.1f} "
                  f"| {statistics.mean(d):+.1f} ± {sd(d):.1f} |")
        ws = [r["shared_wall"] for r in rows]
        wa = [r["alone_wall"] for r in rows]
        print(f"| {plan} | training wall | {statistics.mean(ws):.1f} s | {statistics.mean(wa):.1f} s | "
              f"{statistics.mean(wa) / statistics.mean(ws):.2f}× |")


if __name__ == "__main__":
    main()
