"""Is the Layers page's time estimate right? Real CPU runs against tl_core.plan.plan_cost's estimate.

For each draw of Fashion-MNIST (20 images a class, 200 in all, a different seed each) it trains, in a
fresh workspace (no cached features), feature extraction, the top 2 layer groups, and every group, and
records what the Layers page estimates for them:
- head: the whole run's seconds (one pass through the frozen backbone, then the probe's milliseconds),
  against the estimate's one-off pass plus one epoch;
- top-2 and all: the mean seconds of a fine-tune epoch (training and validation), against the estimate
  of an epoch.

    python bench/plan_cost.py [--draws 3] [--plans head,top-2,all]       # trains, writes results/plan_cost-cpu.json
    python bench/plan_cost.py --estimate-only                            # the table again (estimates of old rows redone)
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

from tl_core.models import backbones, layers
from tl_core.plan import plan_cost
from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import ingest_folder  # noqa: E402
from tl_core.ops.runs import create_run, read_events, read_metrics  # noqa: E402
from tl_core.data.sample_data import fashion_mnist_available, write_fashion_mnist_folder  # noqa: E402

RESULTS = HERE / "results" / "plan_cost-cpu.json"
PER_CLASS = 20
EPOCHS = {"head": 2, "top-2": 2, "all": 2}


def measure(plan: str, draw: int, root: Path) -> dict:
    """Train `plan` on draw `draw` in a fresh workspace under `root`; the seconds that matter."""
    os.environ["TL_STUDIO_HOME"] = str(root / f"ws-{plan}")
    data = write_fashion_mnist_folder(root / "data", "train", per_class=PER_CLASS, seed=draw)
    dataset = ingest_folder(data)
    # Estimated right before the run, in the same process: on a shared machine the load changes by the minute.
    guess = estimate({"plan": plan, "n_images": len(dataset.items), "image_size": 224})
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze=plan, features="last",
                                   epochs=EPOCHS[plan], early_stopping=0, seed=draw))
    worker.run(run_dir)
    metrics, events = read_metrics(run_dir), read_events(run_dir)
    tuned = [e["seconds"] for e in events if e.get("event") == "epoch_end" and e.get("phase") == "finetune"]
    return {"plan": plan, "draw": draw, "wall_s": metrics["wall_s"], "n_images": len(dataset.items),
            "image_size": 224,  # the embedded EfficientNet-Lite0's own size, which the run used
            "finetune_epoch_s": statistics.mean(tuned) if tuned else None, "estimate_s": guess}


def estimate(row: dict) -> float:
    """What the Layers page shows for this run: an epoch of fine-tuning, or the head-only run."""
    model = backbones.create_model(backbones.EMBEDDED_MODEL, 10, weights="none")
    groups = layers.layer_groups(model)
    trainable = layers.parse_freeze(row["plan"], groups)
    n_images = row["n_images"]
    n_val = round(n_images * 0.2)  # the page's split; a head-only run validates by cross-validation instead
    cost = plan_cost.estimate(model, row["image_size"], trainable, "eval", n_images - n_val, n_val)
    return cost["once_s"] + cost["epoch_s"] if row["plan"] == "head" else cost["epoch_s"]


def estimate_before(row: dict) -> float:
    """What the Layers page showed before bench/plan_cost.py existed: one batch timed cold (the backward on its
    first call), in the default memory layout, every frozen layer counted every epoch."""
    import copy
    import time

    import torch

    model = backbones.create_model(backbones.EMBEDDED_MODEL, 10, weights="none")
    groups = layers.layer_groups(model)
    trainable = layers.parse_freeze(row["plan"], groups)
    timed = copy.deepcopy(model)
    layers.apply_freeze(timed, layers.layer_groups(timed), trainable, "eval")
    images = torch.randn(8, 3, row["image_size"], row["image_size"])
    timed.eval()
    with torch.no_grad():
        timed(images[:2])
        start = time.perf_counter()
        timed(images)
        forward = (time.perf_counter() - start) / 8
    n_val = round(row["n_images"] * 0.2)
    if row["plan"] == "head":
        return forward * row["n_images"]
    layers.set_train_mode(timed, "eval")
    start = time.perf_counter()
    timed(images).logsumexp(1).mean().backward()
    train = (time.perf_counter() - start) / 8
    return train * (row["n_images"] - n_val) + forward * n_val


def measured(row: dict) -> float:
    return row["wall_s"] if row["plan"] == "head" else row["finetune_epoch_s"]


def report(rows: list[dict]) -> None:
    print("| plan | measured (s) | estimate (s) | estimate ÷ measured |")
    print("|---|---:|---:|---:|")
    for plan in dict.fromkeys(row["plan"] for row in rows):
        mine = [row for row in rows if row["plan"] == plan]
        real = [measured(row) for row in mine]
        guess = [row["estimate_s"] if "estimate_s" in row else estimate(row) for row in mine]
        ratio = [g / r for g, r in zip(guess, real)]

        def fmt(values, digits=1):
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"

        print(f"| {plan} | {fmt(real)} | {fmt(guess)} | {fmt(ratio, 2)} |")
    print(f"({len(rows) // max(len(set(r['plan'] for r in rows)), 1)} draws; mean ± standard deviation)")


def before_after(rows: list[dict]) -> None:
    """old ÷ new estimate, timed back to back (so a shared machine's load moves both alike), per plan."""
    print("| plan | old estimate ÷ new estimate |")
    print("|---|---:|")
    for plan in dict.fromkeys(row["plan"] for row in rows):
        ratios = []
        for row in [r for r in rows if r["plan"] == plan]:
            ratios.append(estimate_before(row) / estimate(row))
        spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        print(f"| {plan} | {statistics.mean(ratios):.1f} ± {spread:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--plans", default="head,top-2,all")
    parser.add_argument("--estimate-only", action="store_true")
    parser.add_argument("--before-after", action="store_true",
                        help="the old and the new estimate of the saved runs, each timed right after the other")
    args = parser.parse_args()
    if args.before_after:
        before_after(json.loads(RESULTS.read_text())["runs"])
        return
    if args.estimate_only:
        report(json.loads(RESULTS.read_text())["runs"])
        return
    if not fashion_mnist_available():
        sys.exit("needs Debian's dataset-fashion-mnist")
    rows = []
    for draw in range(args.draws):
        for plan in args.plans.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(measure(plan, draw, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.write_text(json.dumps({"cpu": os.cpu_count(), "runs": rows}, indent=1))
    report(rows)


if __name__ == "__main__":
    main()
