"""Does choosing the layers that learn pay? The default (Auto plan) against each freeze plan, on held-out images.

For each data set and images a class, each draw (seed = draw) takes its own training images (bench/accuracy.py's
draws: Fashion-MNIST from the training split, UCI digits from what is left after the fixed test images), and
the same test images, never used in training (50 a class), score the model each recipe's run kept. Printed and
saved per recipe: test accuracy mean ± sd over the draws, the wall of each run, and which phase (and for the
default, which plan) the run kept.

Recipes: default (RunConfig() as the app starts it: freeze="auto"), head (feature extraction), top-1, top-2,
all (the probe on the features the default would choose, then that many groups fine-tuned, `--epochs`), and
recipe variants of a plan, "PLAN+VARIANT", measured to choose the fine-tune defaults (issue 24):
- llrd0.5: layer-wise learning-rate decay 0.5 a group instead of 0.7;
- l2sp: L2-SP, a pull of the trained weights back toward the pretrained ones (tl_core.fit.regularize.L2SP);
- light / strong: augmentation presets (tl_core/data/augment.py);
- long: twice the epochs;
several at once: "all+light+long".

    python bench/plans.py --data fashion --shots 20,100 --draws 3 --recipes default,head,top-1,top-2,all
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

from accuracy import write_draw  # noqa: E402
from compare import test_accuracy  # noqa: E402
from finetune import _test_set  # noqa: E402
from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import ingest_folder  # noqa: E402
from tl_core.fit import optim  # noqa: E402
from tl_core.fit.callbacks import Callback, _changeable_state  # noqa: E402
from tl_core.use.predict import Predictor  # noqa: E402
from tl_core.fit.regularize import L2SP  # noqa: E402
from tl_core.ops.runs import create_run, read_plan  # noqa: E402

PLANS = {"default": {}, "head": dict(freeze="head"), "top-1": dict(freeze="top-1"), "top-2": dict(freeze="top-2"),
         "all": dict(freeze="all")}
L2SP_ALPHA = 0.01  # L2-SP's usual strength for a few hundred images (Li et al. 2018 used 0.01-0.1)


def recipe_config(recipe: str, epochs: int) -> tuple[dict, dict]:
    """(RunConfig changes, bench-only settings) of "PLAN" or "PLAN+VARIANT"."""
    plan, *variants = recipe.split("+")  # "all+light+long": several variants at once
    changes = dict(PLANS[plan])
    if plan not in ("default", "head"):
        changes["epochs"] = epochs
    extra = {}
    for variant in variants:
        if variant == "llrd0.5":
            extra["layer_lr_decay"] = 0.5
        elif variant == "l2sp":
            extra["l2sp"] = L2SP_ALPHA
        elif variant in ("light", "strong"):
            changes["augment"] = variant
        elif variant == "long":
            changes["epochs"] = 2 * epochs
        else:
            raise SystemExit(f"unknown recipe variant {variant!r}")
    return changes, extra


class _BestTuned(Callback):
    """The weights of the fine-tune phase's best validation epoch, kept or not: what fine-tuning itself reached."""

    def __init__(self):
        self.best, self.state = None, None

    def on_epoch_end(self, info, fit):
        if info.get("phase") == "finetune" and (self.best is None or info["val_acc"] > self.best):
            self.best, self.state = info["val_acc"], _changeable_state(fit.model)


def _tuned_accuracy(run_dir: Path, test_dir: Path, tuned: _BestTuned) -> float | None:
    """Test accuracy of the fine-tune's best weights (None without a fine-tune, or when the refitted probe
    reads other features than the fine-tune did)."""
    if tuned.state is None:
        return None
    predictor = Predictor(run_dir)
    try:
        predictor.model.load_state_dict(tuned.state, strict=False)
    except RuntimeError:
        return None
    pixels, labels = _test_set(test_dir, predictor)
    return (predictor.predict_pixels(pixels).argmax(1) == labels).float().mean().item()


def run_recipe(recipe: str, train_dir: Path, test_dir: Path, draw: int, size: int, epochs: int) -> dict:
    changes, extra = recipe_config(recipe, epochs)
    os.environ["TL_STUDIO_HOME"] = tempfile.mkdtemp(prefix=f"tl_plans_{recipe}_")
    saved_decay = optim.LAYER_LR_DECAY
    optim.LAYER_LR_DECAY = extra.get("layer_lr_decay", saved_decay)
    try:
        start = time.perf_counter()
        dataset = ingest_folder(train_dir)
        run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), seed=draw, image_size=size, device="cpu",
                                       **changes))
        tuned = _BestTuned()
        metrics = worker.run(run_dir, extra_callbacks=[tuned, *([L2SP(extra["l2sp"])] if "l2sp" in extra else [])])
        wall = time.perf_counter() - start
    finally:
        optim.LAYER_LR_DECAY = saved_decay
    plan = read_plan(run_dir) or {}
    kept = metrics["kept"]
    return {"test_acc": test_accuracy(run_dir, test_dir, "cpu"), "wall_s": round(wall, 1),
            "val_acc": metrics["val_acc"], "kept_phase": kept["phase"], "kept_plan": kept.get("plan"),
            "features": metrics.get("features"), "tuned_val_acc": tuned.best,
            "tuned_test_acc": _tuned_accuracy(run_dir, test_dir, tuned), "auto_chose": (plan.get("chosen") or {}).get("plan"),
            "auto_words": plan.get("words")}


def table(results: dict) -> str:
    """The markdown table of bench/RESULTS.md: one row per (set, images a class, recipe)."""
    lines = ["| set | a class | recipe | test accuracy (kept model) | vs default | fine-tune's best epoch, on test |"
             " wall (mean) | kept (each draw) |", "|---|---|---|---|---|---|---|---|"]
    for key, summary in results.items():
        data, shots, recipe, *_ = key.split("/")
        default = results.get("/".join([data, shots, "default", *key.split("/")[3:5]]))
        delta = f"{summary['mean'] - default['mean']:+.1f}" if default and recipe != "default" else ""
        kept = ", ".join(r["kept_phase"] + (f" ({r['auto_chose']} measured best)" if r.get("auto_chose") else "")
                         for r in summary["draws"])
        tuned = [100 * r["tuned_test_acc"] for r in summary["draws"] if r.get("tuned_test_acc") is not None]
        tuned_words = (f"{statistics.mean(tuned):.1f} % ({len(tuned)})" if tuned else "")
        lines.append(f"| {data} | {shots} | {recipe} | {summary['mean']:.1f} ± {summary['sd']:.1f} % "
                     f"({len(summary['draws'])}) | {delta} | {tuned_words} | {summary['wall_mean_s']:.0f} s | {kept} |")
    return "\n".join(lines)


def expectations_table(results: dict, suffix: str = "64px/5ep") -> str:
    """tl_core/plan/expectations.py's BENCH, from the plain plans' results (3 draws or more)."""
    table: dict = {}
    for key, summary in results.items():
        data, shots, recipe, *rest = key.split("/")
        if "/".join(rest) == suffix and recipe in PLANS and len(summary["draws"]) >= 3:
            table.setdefault((data, int(shots)), {})[recipe] = (round(summary["mean"], 1), round(summary["sd"], 1),
                                                               len(summary["draws"]))
    return "BENCH = {\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in sorted(table.items())) + "}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="fashion", choices=["fashion", "digits"])
    parser.add_argument("--shots", default="20,100")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--recipes", default="default,head,top-1,top-2,all")
    parser.add_argument("--size", type=int, default=64, help="input size in px (Fashion-MNIST is 28 px, digits 8)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tune epochs of the top-k and all plans")
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "tl_accuracy_data"))
    parser.add_argument("--out", default=str(HERE / "results" / "plans-cpu.json"))
    parser.add_argument("--table", action="store_true", help="print the markdown table of the saved results")
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.table:
        print(table(results))
        print(expectations_table(results))
        return
    for shots in map(int, args.shots.split(",")):
        for recipe in args.recipes.split(","):
            key = f"{args.data}/{shots}/{recipe}/{args.size}px/{args.epochs}ep"
            rows = list(results.get(key, {}).get("draws", []))
            for draw in range(len(rows), args.draws):  # resumes where an interrupted bench stopped
                train_dir, test_dir = write_draw(args.data, shots, draw, Path(args.root))
                rows.append(run_recipe(recipe, train_dir, test_dir, draw, args.size, args.epochs))
                row = rows[-1]
                tuned_words = f"fine-tune's best: test {row['tuned_test_acc']:.1%} " if row["tuned_test_acc"] else ""
                print(f"{key} draw {draw}: test {row['test_acc']:.1%} val {row['val_acc']:.1%} {tuned_words}"
                      f"kept {row['kept_phase']}/{row['kept_plan']} ({row['wall_s']} s) "
                      f"{row['auto_words'] or ''}", flush=True)
                accs = [100 * r["test_acc"] for r in rows]
                results[key] = {"mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                                "wall_mean_s": statistics.mean(r["wall_s"] for r in rows), "draws": rows}
                out.parent.mkdir(exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
            summary = results[key]
            print(f"== {key}: {summary['mean']:.1f} ± {summary['sd']:.1f} % over {len(rows)} draws, "
                  f"wall {summary['wall_mean_s']:.0f} s, kept {[r['kept_phase'] for r in rows]}", flush=True)


if __name__ == "__main__":
    main()
