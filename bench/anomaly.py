"""Anomaly detection from good images only: AUROC per defect type, layer and method choices, speed.

Data (tl_core.anomaly.synthetic): four categories, three real textures from scikit-image (brick, grass,
gravel; public domain) and one drawn object (a washer-like part in varied pose and light); per category and
draw, 40 good training images, 10 good test images and 6 test images of each defect type (scratch, stain,
hole, foreign patch) with exact masks, 256×256 px, in the MVTec AD layout. Each draw is a new seed: new crops,
new defects. Backbone: the embedded EfficientNet-Lite0 at 224 px.

Arms (the same images for each):
- ours:      tl_core's anomaly kind as the CLI runs it (stages 2+3, coreset bank 3 % of the patches, ≥ 1000,
             chosen on a 96-dim projection; 3×3 neighbourhood average with zero padding, PatchCore's own)
- ours-full152, ours-proj128, ours-proj64: the coreset chosen on all 152 features or on 128 or 64 dims
             (rows kept in results/anomaly-cpu.json; set tl_core.anomaly.memory.PROJECTION_DIMS to rerun)
- *-nopad:   the arms below as first measured, with a neighbourhood average over the cells inside the image
             only at the border (kept in results/anomaly-cpu.json: the comparison that made us switch)
- wider:     stages 2+3+4 (adds stride 32)
- bank10:    stages 2+3, bank 10 % of the patches
- padim:     PaDiM (Defard et al. 2020) on the same stage-2+3 features: a Gaussian per patch position
             (100 random channels, covariance + 0.01 I), Mahalanobis distance; same upsampling and smoothing
- anomalib:  anomalib's PatchCore on the same images and backbone (our embedded weights loaded into its
             extractor), its coreset keeping as many patches as ours, when anomalib imports (run it from its
             own venv: TQDM_DISABLE=1 python bench/anomaly.py --arms anomalib)

Speed (fresh workspace, no cache, 40 good images of brick): fit wall against plain feature extraction (build
the timm model, decode and resize the images, one forward pass to pooled features), and per-image inference
(median of 20) against the backbone's own forward pass on one image.

    python bench/anomaly.py [--draws 3] [--arms ours,wider,bank10,padim] [--speed] [--root DIR] [--out FILE]
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

import numpy as np  # noqa: E402

from tl_core.anomaly.synthetic import DEFECTS, SOURCES, write_mvtec  # noqa: E402

N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 40, 10, 6
EXTRA = {"ours": {}, "wider": {"anomaly_layers": [2, 3, 4]}, "bank10": {"bank_fraction": 0.10}}


def dataset(root: Path, source: str, draw: int) -> Path:
    folder = root / f"{source}-{draw}"
    if not (folder / "ground_truth").is_dir():
        write_mvtec(folder, source, seed=1000 * draw + SOURCES.index(source), n_train=N_TRAIN,
                    n_test_good=N_TEST_GOOD, n_per_defect=N_PER_DEFECT)
    return folder


def run_ours(folder: Path, workspace: Path, extra: dict) -> dict:
    """tl_core's kind end to end (ingest, fit, evaluate), as the CLI does it."""
    os.environ["TL_STUDIO_HOME"] = str(workspace)
    from tl_core.ops import runs
    from tl_core import worker as train
    from tl_core.anomaly.data import ingest_anomaly_or_reuse_folder
    from tl_core.anomaly.evaluate import evaluate
    from tl_core.config import RunConfig

    dataset_dir = ingest_anomaly_or_reuse_folder(folder / "train").root
    run_dir = runs.create_run(RunConfig(task="anomaly", dataset_dir=str(dataset_dir), kind_options=extra))
    t0 = time.perf_counter()
    train.run(run_dir)
    fit_s = time.perf_counter() - t0
    report = evaluate(run_dir, folder / "test")
    return {**_flat(report), "fit_s": fit_s}


def run_padim(folder: Path, workspace: Path, seed: int) -> dict:
    """PaDiM on tl_core's stage-2+3 patch features: a Gaussian per position, Mahalanobis distance."""
    import torch

    os.environ["TL_STUDIO_HOME"] = str(workspace)
    from tl_core.anomaly.data import read_mask, read_test_folder
    from tl_core.anomaly.features import build_extractor, extract
    from tl_core.anomaly.metrics import summarize
    from tl_core.anomaly.model import AnomalyModel
    from tl_core.anomaly.threshold import from_good

    extractor, geometry = build_extractor("efficientnet_lite0", "embedded")
    good = sorted((folder / "train" / "good").glob("*.png"))
    features = extract(extractor, good, geometry)
    n, channels, height, width = features.shape
    pick = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))[:100]
    x = features[:, pick].permute(2, 3, 0, 1).reshape(height * width, n, -1)  # position × image × channel
    mean = x.mean(1)
    centred = x - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / (n - 1) + 0.01 * torch.eye(len(pick))
    precision = torch.linalg.inv(cov)
    smoother = AnomalyModel(extractor, torch.zeros(1, channels))

    def score(paths):
        f = extract(extractor, paths, geometry)[:, pick].permute(2, 3, 0, 1).reshape(height * width, len(paths), -1)
        d = f - mean[:, None]
        m = torch.einsum("pnc,pcd,pnd->pn", d, precision, d).clamp_min(0).sqrt()
        patch = m.T.reshape(len(paths), height, width)
        return patch.flatten(1).amax(1).numpy(), smoother.smooth_map(patch, (224, 224)).numpy()

    samples, _, _ = read_test_folder(folder / "test")
    scores, maps = score([s.path for s in samples])
    train_scores, _ = score(good)  # PaDiM has no leave-one-out: its threshold reads the training scores
    masks = [read_mask(s.mask, (224, 224)) if s.mask else None for s in samples]
    return _flat(summarize([s.label for s in samples], scores, from_good(train_scores)["value"], masks, list(maps)))


def run_anomalib(folder: Path, workspace: Path) -> dict:
    """anomalib's PatchCore (its torch model, no Lightning trainer), our embedded Lite0 weights in its extractor,
    stages blocks.2 and blocks.4 (our stages 2+3), its own coreset (as many patches as ours keeps), its own
    scoring (re-weighted by the 9 nearest neighbours) and maps."""
    import torch

    os.environ["TL_STUDIO_HOME"] = str(workspace)
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from tl_core.models import backbones
    from tl_core.anomaly.data import read_mask, read_test_folder
    from tl_core.anomaly.features import load_pixels
    from tl_core.anomaly.metrics import summarize

    model = PatchcoreModel(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"], pre_trained=False,
                           num_neighbors=9)
    trained = backbones.create_model("efficientnet_lite0", 0, weights="embedded").state_dict()
    missing = model.feature_extractor.feature_extractor.load_state_dict(trained, strict=False)
    assert not missing.missing_keys, missing.missing_keys[:5]
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255
    good = sorted((folder / "train" / "good").glob("*.png"))
    model.train()
    with torch.no_grad():
        for start in range(0, len(good), 16):
            model(((load_pixels(good[start:start + 16], 224) - mean) / mean))
        # the same bank size as ours: anomalib's coreset costs far more per step (its default 10 % would take
        # ~10 min a category on this machine)
        from tl_core.anomaly.memory import bank_size

        patches = sum(len(e) for e in model.embedding_store)
        model.subsample_embedding(bank_size(patches) / patches)
    model.eval()
    samples, _, _ = read_test_folder(folder / "test")
    scores, maps = [], []
    with torch.no_grad():
        for start in range(0, len(samples), 16):
            out = model((load_pixels([s.path for s in samples[start:start + 16]], 224) - mean) / mean)
            scores.append(out.pred_score.flatten().numpy())
            maps.append(out.anomaly_map[:, 0].numpy())
    scores, maps = np.concatenate(scores), np.concatenate(maps)
    masks = [read_mask(s.mask, (224, 224)) if s.mask else None for s in samples]
    return _flat(summarize([s.label for s in samples], scores, float(np.median(scores)), masks, list(maps)))


def _flat(report: dict) -> dict:
    row = {"image_auroc": report["image_auroc"], "pixel_auroc": report["pixel_auroc"]}
    for defect, figures in report["per_defect"].items():
        row[f"{defect}/image"] = figures["image_auroc"]
        row[f"{defect}/pixel"] = figures.get("pixel_auroc")
    return row


def speed(root: Path, repeats: int = 20) -> dict:
    """Fit wall against plain feature extraction; per-image inference against the backbone's forward."""
    import timm
    import torch

    from tl_core.models import backbones
    from tl_core.anomaly.features import load_pixels

    folder = dataset(root, "brick", 0)
    good = sorted((folder / "train" / "good").glob("*.png"))
    # warm-up, untimed: MKL start, the embedded weights unpacked once
    backbones.create_model("efficientnet_lite0", 0, weights="embedded")

    def plain_features() -> float:
        t0 = time.perf_counter()
        model = backbones.create_model("efficientnet_lite0", 0, weights="embedded").eval()
        with torch.inference_mode():
            for start in range(0, len(good), 16):
                model(load_pixels(good[start:start + 16], 224) / 127.5 - 1)
        return time.perf_counter() - t0

    def our_fit() -> float:
        with tempfile.TemporaryDirectory() as workspace:
            os.environ["TL_STUDIO_HOME"] = workspace
            from tl_core.ops import runs
            from tl_core import worker as train
            from tl_core.anomaly.data import ingest_anomaly_folder
            from tl_core.config import RunConfig

            dataset_dir = ingest_anomaly_folder(folder / "train").root  # ingest untimed: both read the same files
            run_dir = runs.create_run(RunConfig(task="anomaly", dataset_dir=str(dataset_dir)))
            t0 = time.perf_counter()
            train.run(run_dir)
            wall = time.perf_counter() - t0
            metrics = json.loads(runs.RunFolder(run_dir).metrics.read_text())
            return wall, metrics

    plain_walls, fit_walls, parts = [], [], []
    for _ in range(3):
        plain_walls.append(plain_features())
        wall, metrics = our_fit()
        fit_walls.append(wall)
        parts.append({"features_s": metrics["features_s"], "coreset_s": metrics["bank"]["seconds"]})
    with tempfile.TemporaryDirectory() as workspace:
        os.environ["TL_STUDIO_HOME"] = workspace
        from tl_core.ops import runs
        from tl_core import worker as train
        from tl_core.anomaly.data import ingest_anomaly_folder
        from tl_core.anomaly.predict import AnomalyPredictor
        from tl_core.config import RunConfig

        run_dir = runs.create_run(RunConfig(task="anomaly",
                                            dataset_dir=str(ingest_anomaly_folder(folder / "train").root)))
        train.run(run_dir)
        predictor = AnomalyPredictor(run_dir)
        pixels = load_pixels(good[:1], 224)
        backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
        ours, theirs = [], []
        with torch.inference_mode():
            for _ in range(3):
                predictor.model(pixels), backbone(pixels)  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                predictor.model(pixels)
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                backbone(pixels)
                theirs.append(time.perf_counter() - t0)
    fit_ratio = [f / p for f, p in zip(fit_walls, plain_walls)]
    return {"images": len(good), "plain_features_s": plain_walls, "fit_s": fit_walls, "fit_parts": parts,
            "fit_over_plain": fit_ratio, "infer_ms": 1000 * statistics.median(ours),
            "backbone_forward_ms": 1000 * statistics.median(theirs),
            "infer_over_forward": statistics.median(ours) / statistics.median(theirs),
            "bank": metrics["bank"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--arms", default="ours,wider,bank10,padim")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "tl-anomaly-bench"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "anomaly-cpu.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = Path(args.root)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("rows", [])
    if args.speed:
        results["speed"] = speed(root)
        print(json.dumps(results["speed"], indent=1), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    for draw in range(args.draws):
        for source in args.sources.split(","):
            folder = dataset(root, source, draw)
            for arm in args.arms.split(","):
                with tempfile.TemporaryDirectory() as workspace:
                    t0 = time.perf_counter()
                    if arm == "padim":
                        row = run_padim(folder, Path(workspace), draw)
                    elif arm == "anomalib":
                        row = run_anomalib(folder, Path(workspace))
                    else:
                        row = run_ours(folder, Path(workspace), EXTRA[arm])
                row.update(arm=arm, source=source, draw=draw, wall_s=time.perf_counter() - t0)
                results["rows"] = [r for r in results["rows"]
                                   if (r["arm"], r["source"], r["draw"]) != (arm, source, draw)] + [row]
                print(json.dumps(row), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
    print(table(results["rows"]))


def _mean_row(rows: list[dict]) -> dict:
    keys = {key for row in rows for key in row if key not in ("arm", "source", "draw")}
    return {key: statistics.mean([r[key] for r in rows if r.get(key) is not None])
            if any(r.get(key) is not None for r in rows) else None for key in keys}


def table(rows: list[dict]) -> str:
    """Markdown: per arm and source, image and pixel AUROC mean ± sd over draws, then per defect type; the "all"
    row averages the sources within each draw first."""
    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "—"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 \
            else f"{values[0]:.3f}"

    order = ["ours", "anomalib", "ours-full152", "ours-proj128", "ours-proj64", "ours-nopad", "wider-nopad", "padim-nopad", "wider", "bank10", "padim"]
    arms = sorted({r["arm"] for r in rows}, key=lambda a: order.index(a) if a in order else len(order))
    lines = ["| arm | source | image AUROC | pixel AUROC | " + " | ".join(f"{d} img / px" for d in DEFECTS) + " |",
             "|" + "---|" * (4 + len(DEFECTS))]
    for arm in arms:
        for source in list(SOURCES) + ["all"]:
            picked = [r for r in rows if r["arm"] == arm and (source == "all" or r["source"] == source)]
            if not picked:
                continue
            if source == "all":  # one row a draw, averaged over the sources: the sd is over draws only
                picked = [_mean_row([r for r in picked if r["draw"] == draw]) for draw in sorted({r["draw"] for r in picked})]
            per_defect = [f"{cell([r.get(f'{d}/image') for r in picked])} / {cell([r.get(f'{d}/pixel') for r in picked])}"
                          for d in DEFECTS]
            lines.append(f"| {arm} | {source} | {cell([r['image_auroc'] for r in picked])} | "
                         f"{cell([r['pixel_auroc'] for r in picked])} | " + " | ".join(per_defect) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
