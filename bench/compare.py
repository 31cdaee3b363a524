"""The app's recipes against the plain timm + DataLoader loop a user would write, side by side.

Same data (Fashion-MNIST, 20 training images a class, 50 test images a class), same weights
(the embedded EfficientNet-Lite0), same machine, one process. Prints wall time, images/s, test
accuracy and the ratios; writes bench/results/compare-<device>.json.

    python bench/compare.py [--device cpu|cuda] [--only fe,plain_head]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from data import bench_folders  # noqa: E402
from tl_core.models import backbones
from tl_core import worker  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import decode_images, ingest_folder  # noqa: E402
from tl_core.models.devices import describe  # noqa: E402
from tl_core.use.predict import Predictor  # noqa: E402
from tl_core.ops.runs import create_run  # noqa: E402

BACKBONE = "efficientnet_lite0"
RECIPES = {  # name: (RunConfig changes, what it is)
    "fe": (dict(freeze="head", epochs=10), "feature extraction (default recipe)"),
    "partial": (dict(freeze="top-2", epochs=5), "probe, then fine-tune the top 2 groups"),
    "full": (dict(freeze="all", epochs=5), "probe, then full fine-tune"),
}


def run_recipe(name: str, train_dir: Path, test_dir: Path, device: str) -> dict:
    """One recipe from a cold workspace: ingest, decode, train; then accuracy on the test images."""
    changes, _ = RECIPES[name]
    os.environ["TL_STUDIO_HOME"] = tempfile.mkdtemp(prefix=f"tl_bench_{name}_")
    start = time.perf_counter()
    dataset = ingest_folder(train_dir)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), backbone=BACKBONE, device=device, **changes))
    metrics = worker.run(run_dir)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "train_images": len(dataset.items), "epochs": metrics["epochs_run"],
            "images_per_s": len(dataset.items) * metrics["epochs_run"] / wall,
            "test_acc": test_accuracy(run_dir, test_dir, device), "val_acc": metrics["val_acc"]}


def test_accuracy(run_dir: Path, test_dir: Path, device: str) -> float:
    predictor = Predictor(run_dir, device="cuda" if device == "cuda" else "cpu")
    paths, labels = [], []
    for k, class_dir in enumerate(sorted(p for p in test_dir.iterdir() if p.is_dir())):
        assert class_dir.name == predictor.classes[k]
        for f in sorted(class_dir.glob("*.png")):
            paths.append(f)
            labels.append(k)
    pixels = decode_images(paths, predictor.size, predictor.preprocess["crop_pct"], predictor.preprocess["interpolation"])
    predicted = predictor.predict_pixels(pixels).argmax(1)
    return (predicted == torch.tensor(labels)).float().mean().item()


def run_plain_loop(head_only: bool, train_dir: Path, test_dir: Path, device: str, epochs: int = 5) -> dict:
    """What a user writes by hand: timm model and transforms, ImageFolder, DataLoader, AdamW, one-cycle."""
    torch.manual_seed(0)
    dev = torch.device(device)
    start = time.perf_counter()
    model = backbones.create_model(BACKBONE, 10, weights="embedded").to(dev)
    data_cfg = timm.data.resolve_model_data_config(model)
    train_set = ImageFolder(str(train_dir), transform=timm.data.create_transform(**data_cfg, is_training=True))
    loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=2,
                        pin_memory=dev.type == "cuda", persistent_workers=True)
    if head_only:
        for p in model.parameters():
            p.requires_grad = False
        for p in model.get_classifier().parameters():
            p.requires_grad = True
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    test_set = ImageFolder(str(test_dir), transform=timm.data.create_transform(**data_cfg))
    correct = 0
    model.eval()
    with torch.inference_mode():
        for x, y in DataLoader(test_set, batch_size=64, num_workers=2):
            correct += (model(x.to(dev)).argmax(1).cpu() == y).sum().item()
    return {"wall_s": wall, "train_images": len(train_set), "epochs": epochs,
            "images_per_s": len(train_set) * epochs / wall, "test_acc": correct / len(test_set)}


def _warm_up(device: torch.device) -> None:
    """Start CUDA/cuDNN (or MKL) and build the model once, untimed, so no contender pays it alone."""
    model = backbones.create_model(BACKBONE, 10, weights="embedded").to(device).train()
    model(torch.randn(8, 3, 224, 224, device=device)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default="fe,partial,full,plain_head,plain_full")
    parser.add_argument("--data", default=None, help="where to write the Fashion-MNIST folders")
    args = parser.parse_args()
    train_dir, test_dir = bench_folders(Path(args.data) if args.data else None)
    _warm_up(torch.device(args.device))
    results = {}
    for name in args.only.split(","):
        if name in RECIPES:
            results[name] = run_recipe(name, train_dir, test_dir, args.device)
        else:
            results[name] = run_plain_loop(name == "plain_head", train_dir, test_dir, args.device)
        r = results[name]
        print(f"{name:11s} wall {r['wall_s']:7.1f} s  {r['images_per_s']:7.1f} img/s  test acc {r['test_acc']:.1%}",
              flush=True)
    report = {"device": describe(torch.device(args.device)), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "backbone": BACKBONE, "results": results}
    if "fe" in results and "plain_head" in results:
        report["fe_wall_over_plain_head"] = results["fe"]["wall_s"] / results["plain_head"]["wall_s"]
        print(f"feature extraction wall / plain head-only loop wall: {report['fe_wall_over_plain_head']:.3f}")
    if "full" in results and "plain_full" in results:
        report["full_wall_over_plain_full"] = results["full"]["wall_s"] / results["plain_full"]["wall_s"]
        print(f"full fine-tune wall / plain full loop wall: {report['full_wall_over_plain_full']:.3f}")
    out = HERE / "results" / f"compare-{torch.device(args.device).type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
