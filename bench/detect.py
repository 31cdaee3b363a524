"""Detection bench: tl_core's detect fit against a plain torchvision training loop, freeze plans, set sizes,
and the CPU wall of a default run. Mean ± sd over draws (a draw: a new set of training scenes and seed).

Data: scenes made by tl_core.detect.sample (Fashion-MNIST items of the bundled sample pasted on varied
backgrounds, 1–3 objects of 3 classes a picture, 160 px); the test set: scenes of other items (never trained on).
Usage: python bench/detect.py [--draws 3] [--epochs 4] [--size 96] [--only plain,freeze,sizes|default]
Prints a markdown table (for bench/RESULTS.md) and writes bench/results/detect.json.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _run_tl_core(data: Path, test_root: Path, freeze: str, epochs: int, size: int, seed: int, **extra) -> dict:
    from tl_core import kinds
    from tl_core import worker as train
    from tl_core.config import RunConfig
    from tl_core.ops.runs import create_run

    root = kinds.get("detect").call("ingest", data)
    settings = dict(epochs=epochs, image_size=size, batch_size=8, early_stopping=0, seed=seed)
    settings.update(extra)
    config = RunConfig(dataset_dir=str(root), task="detect", freeze=freeze, **settings)
    started = time.time()
    run_dir = create_run(config)
    train.run(run_dir)
    wall = time.time() - started
    report = kinds.get("detect").call("evaluate", run_dir, test_root)
    return {"map50": report["map50"], "map": report["map"], "wall_s": wall}


def _run_plain(data: Path, test_root: Path, epochs: int, size: int, seed: int) -> dict:
    """What a user would write by hand with torchvision: the same FCOS on the same frozen Lite0 pyramid, Adam at
    a constant 1e-3, the pictures resized each batch, no warm-up, schedule, validation or best-epoch choice."""
    import numpy as np
    import torch
    from PIL import Image

    from tl_core.detect.formats import ingest, load_boxset
    from tl_core.detect.model import build

    torch.manual_seed(seed)
    boxset = load_boxset(ingest(data))
    index = {name: k for k, name in enumerate(boxset.classes)}
    started = time.time()
    model = build("tf_efficientnet_lite0", len(boxset.classes), "embedded", size)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith("backbone.body."))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # the same 80 % of pictures tl_core trains on (its default hold-out), so both see as much data
    from tl_core.detect.batches import split

    train_idx, _ = split(len(boxset.images), 0.2, seed)
    samples = [boxset.images[i] for i in train_idx]
    for epoch in range(epochs):
        model.train()
        model.backbone.body.eval()
        order = torch.randperm(len(samples)).tolist()
        for start in range(0, len(order), 8):
            images, targets = [], []
            for i in order[start:start + 8]:
                item = samples[i]
                picture = Image.open(boxset.path(item)).convert("RGB")
                sx, sy = size / picture.width, size / picture.height
                pixels = torch.from_numpy(np.array(picture.resize((size, size), Image.Resampling.BILINEAR))).permute(2, 0, 1)
                images.append(pixels.float() / 255)
                boxes = torch.tensor([[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in item["boxes"]],
                                     dtype=torch.float32).reshape(-1, 4)
                targets.append({"boxes": boxes, "labels": torch.tensor([index[l] for l in item["labels"]],
                                                                       dtype=torch.int64)})
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    wall = time.time() - started
    with tempfile.TemporaryDirectory() as scratch:
        from tl_core.detect.evaluate import box_metrics
        from tl_core.detect.predict import DetectPredictor
        from tl_core.ops.runs import RunFolder
        from tl_core.ops.storage import atomic_write_bytes, atomic_write_json
        import safetensors.torch

        folder = RunFolder(scratch)
        atomic_write_bytes(folder.weights, safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()}))
        atomic_write_json(folder.labels, {"classes": boxset.classes})
        atomic_write_json(folder.preprocess, {"backbone": "tf_efficientnet_lite0", "weights": "embedded",
                                              "image_size": size})
        predictor = DetectPredictor(scratch)
        predictions, targets, _ = predictor.predict_boxset(load_boxset(ingest(test_root)))
        scores = box_metrics(predictions, targets, boxset.classes)
    return {"map50": scores["map50"], "map": scores["map"], "wall_s": wall}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _wall(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.0f}" if values else "-"
    return f"{statistics.mean(values):.0f} ± {statistics.stdev(values):.0f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--test", type=int, default=40, help="test scenes (of items never trained on)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--default-wall", action="store_true", help="also time CLI-default runs on 120 pictures")
    parser.add_argument("--only", default="plain,freeze,sizes", help="which comparisons: plain, freeze, sizes, "
                        "head (the frozen-backbone run alone), default (the CLI-default run on 120 pictures)")
    args = parser.parse_args()
    import torch

    from tl_core.detect.sample import write_set
    from tl_core.models.devices import describe

    torch.set_num_threads(args.threads)

    os.environ.setdefault("TL_STUDIO_HOME", tempfile.mkdtemp(prefix="bench-detect-"))
    work = Path(tempfile.mkdtemp(prefix="bench-detect-data-"))
    test_root = write_set(work / "test", args.test, "coco", seed=1000, size=160, first_item=20, items=10)
    rows: dict[str, list[dict]] = {}
    only = set(args.only.split(","))
    for draw in range(args.draws):
        sets = {n: write_set(work / f"train_{n}_{draw}", n, "coco", seed=draw, size=160) for n in (50, 100, 200)} \
            if only & {"plain", "freeze", "sizes", "head"} else {}
        plans = []
        if "plain" in only:
            plans += [("plain torchvision loop, frozen backbone, 100 pictures", lambda: _run_plain(
                sets[100], test_root, args.epochs, args.size, draw))]
        if only & {"plain", "freeze", "sizes", "head"}:
            plans += [("tl_core, frozen backbone (head), 100 pictures", lambda: _run_tl_core(
                sets[100], test_root, "head", args.epochs, args.size, draw))]
        if "freeze" in only:
            plans += [(f"tl_core, {f}, 100 pictures", lambda f=f: _run_tl_core(
                sets[100], test_root, f, args.epochs, args.size, draw)) for f in ("top-3", "all")]
        if "sizes" in only:
            plans += [(f"tl_core, frozen backbone (head), {n} pictures", lambda n=n: _run_tl_core(
                sets[n], test_root, "head", args.epochs, args.size, draw)) for n in (50, 200)]
        if args.default_wall or "default" in only:
            default_set = write_set(work / f"default_{draw}", 120, "coco", seed=500 + draw, size=160)
            plans += [("tl_core CLI defaults (freeze auto, 10 epochs, batch 32, 192 px), 120 pictures",
                       lambda: _run_tl_core(default_set, test_root, "auto", 10, 192, draw, batch_size=32,
                                            early_stopping=5))]
        for name, job in plans:
            result = job()
            rows.setdefault(name, []).append(result)
            print(f"draw {draw}: {name}: mAP@50 {result['map50']:.3f} mAP {result['map']:.3f} "
                  f"wall {result['wall_s']:.0f} s", flush=True)
    out = ROOT / "bench" / "results" / f"detect-{args.only.replace(',', '-')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": describe(), "draws": args.draws, "epochs": args.epochs, "size": args.size,
                               "rows": rows}, indent=1))
    print(f"\nDevice: {describe()}; {args.draws} draws; {args.epochs} epochs at {args.size} px, batch 8; "
          f"test: {args.test} scenes of unseen items\n")
    print("| setting | test mAP@50 | test mAP@[.5:.95] | wall (s) |")
    print("|---|---|---|---|")
    for name, results in rows.items():
        print(f"| {name} | {_mean_sd([r['map50'] for r in results])} | {_mean_sd([r['map'] for r in results])} | "
              f"{_wall([r['wall_s'] for r in results])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
