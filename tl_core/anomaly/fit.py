"""Fitting an anomaly run: patch features of the good images, a coreset memory bank, held-out scores, a threshold.

One pass of the frozen backbone over the images (cached), then no training at all: the bank is the model.
Events go out through `emit` (tl_core.fit.callbacks.EVENTS): fit_start, notices, phase_start per step, batch_end
while features are computed (the Train page's progress and the STOP check), fit_end.
"""
from __future__ import annotations

import csv
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tl_core.anomaly import audit, threshold as thresholds
from tl_core.anomaly.data import MIN_GOOD_IMAGES, good_paths, labelled_samples, mask_problems, read_mask
from tl_core.anomaly.features import DEFAULT_LAYERS, build_extractor, extract
from tl_core.anomaly.memory import (BANK_FRACTION, bank_size, greedy_coreset, leave_one_out_scores,
                                    nearest_distances)
from tl_core.anomaly.metrics import summarize
from tl_core.anomaly.model import AnomalyModel, bank_megabytes
from tl_core.data.datasets import load_dataset
from tl_core.models.devices import describe, pick_device
from tl_core.ops.runs import RunFolder
from tl_core.ops.storage import atomic_file, atomic_write_json, atomic_write_text

SHOWN_REFUSALS = 10  # refused files listed one notice each; more are counted


def options(config) -> dict:
    """The kind's settings, from RunConfig.kind_options: stages, bank fraction, expected false-alarm rate."""
    extra = config.kind_options or {}
    return {"layers": tuple(int(i) for i in extra.get("anomaly_layers", DEFAULT_LAYERS)),
            "bank_fraction": float(extra.get("bank_fraction", BANK_FRACTION)),
            "false_alarm_rate": float(extra.get("false_alarm_rate", thresholds.FALSE_ALARM_RATE))}


def fit(config, run_dir, emit, strategy=None) -> dict:
    """Fit the anomaly run in `run_dir` (tl_core.kinds contract); the metrics dict, also in metrics.json."""
    t0 = time.perf_counter()
    run_dir, settings = Path(run_dir), options(config)
    torch.manual_seed(config.seed)
    dataset = load_dataset(config.dataset_dir)
    good, labelled = good_paths(dataset.root), labelled_samples(dataset.root)
    if len(good) < MIN_GOOD_IMAGES:
        raise ValueError(f"{len(good)} good images: anomaly detection needs at least {MIN_GOOD_IMAGES}")
    device = pick_device(config.device)
    extractor, geometry = build_extractor(config.backbone, config.weights, settings["layers"], config.image_size)
    extractor.to(device)
    size = geometry["input_size"][-1]
    emit("fit_start", epochs=1, kind="anomaly", device=describe(device), n_train=len(good), n_val=len(labelled),
         message=f"anomaly detection on {describe(device)}: {len(good)} good images, {len(labelled)} labelled "
                 f"test images; {config.backbone} stages {list(settings['layers'])} at {size} px")
    _announce_data(dataset, emit)

    emit("phase_start", phase="features", message="patch features: every image through the frozen backbone once")
    t_features = time.perf_counter()
    paths = good + [sample.path for sample in labelled]
    features = extract(extractor, paths, geometry, on_batch=lambda done, total: emit(
        "batch_end", phase="features", done=done, total=total))
    features_s = time.perf_counter() - t_features
    n_good, dims, height, width = len(good), *features.shape[1:]
    flat = features[:n_good].permute(0, 2, 3, 1).reshape(-1, dims).contiguous().to(device)
    owner = torch.arange(n_good).repeat_interleave(height * width)

    emit("phase_start", phase="memory", message="memory bank: greedy coreset of the good patches")
    chosen, cost = greedy_coreset(flat, bank_size(len(flat), settings["bank_fraction"]), config.seed)
    bank = flat[chosen.to(device)].clone()
    cost.update(dims=dims, megabytes=bank_megabytes(bank))
    emit("notice", phase="memory", kind="bank", message=(
        f"memory bank: {cost['kept']:,} of {cost['of']:,} good patches ({cost['kept'] / cost['of']:.1%}), "
        f"{dims} numbers each, {cost['megabytes']} MB; choosing them took {cost['seconds']:.2f} s"))

    emit("phase_start", phase="threshold", message="scores: each good image against the others, labelled images")
    loo, exact_loo = (scores.numpy() for scores in leave_one_out_scores(flat, owner, chosen, n_good))
    names = [str(path.relative_to(dataset.root)) for path in good]
    outliers = audit.outlier_goods(exact_loo, names)
    for outlier in outliers:
        emit("notice", phase="audit", kind="outlier", image=outlier["name"], message=outlier["message"])
    model = AnomalyModel(extractor, bank).eval()
    scores, maps = _score_cached(model, features[n_good:].to(device), size)
    model.cpu()  # saved and reloaded on the CPU; predict moves it where it runs
    chosen_threshold = _threshold(loo, labelled, scores, settings["false_alarm_rate"])
    emit("notice", phase="threshold", kind="threshold",
         message=f"threshold {chosen_threshold['value']:.3f}: {chosen_threshold['words']}")

    metrics = {"kind": "anomaly", "threshold": chosen_threshold["value"], "threshold_method": chosen_threshold["method"],
               "good_images": n_good, "labelled_images": len(labelled), "bank": cost,
               "good_scores": {"median": float(np.median(loo)), "max": float(loo.max())},
               "outliers": outliers, "features_s": round(features_s, 3)}
    if any(sample.anomalous for sample in labelled):
        masks = [read_mask(s.mask, (size, size)) if s.mask else None for s in labelled]
        measured = summarize([s.label for s in labelled], scores, chosen_threshold["value"], masks, list(maps))
        measured["labelled_good_images"] = measured.pop("good_images")  # "good_images" stays the training count
        metrics.update(measured)
        metrics["note"] = "measured on the labelled images that also set the threshold: evaluate on new ones"
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    metrics["images_per_s"] = round(len(paths) / max(metrics["wall_s"], 1e-9), 2)
    geometry.update(bank=list(bank.shape), grid=[height, width], train_size=_common_size(dataset), kind="anomaly")
    _save(run_dir, model, geometry, chosen_threshold, names, loo, labelled, scores, maps, dataset.root, metrics)
    emit("fit_end", **{k: metrics.get(k) for k in ("threshold", "image_auroc", "pixel_auroc", "wall_s")})
    return {**metrics, "summary": _summary(metrics)}


def _announce_data(dataset, emit) -> None:
    for note in dataset.notes:
        emit("notice", phase="data", kind="data", message=note)
    for refused in dataset.refused[:SHOWN_REFUSALS]:
        emit("notice", phase="data", kind="refused", message=f"refused: {refused['name']}: {refused['reason']}")
    if len(dataset.refused) > SHOWN_REFUSALS:
        emit("notice", phase="data", kind="refused",
             message=f"and {len(dataset.refused) - SHOWN_REFUSALS} more refused files (listed in the dataset)")
    for problem in mask_problems(dataset.root):
        emit("notice", phase="data", kind="mask", message=f"{problem['name']}: {problem['reason']}")


@torch.inference_mode()
def _score_cached(model: AnomalyModel, features: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and smoothed maps (N×size×size) of images whose patch features are already computed."""
    if not len(features):
        return np.zeros(0), np.zeros((0, size, size), np.float32)
    n, dims, height, width = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, dims)
    patch = nearest_distances(flat, model.bank).reshape(n, height, width)
    maps = torch.cat([model.smooth_map(patch[i:i + 32], (size, size)).cpu() for i in range(0, n, 32)])
    return patch.flatten(1).amax(1).cpu().numpy(), maps.numpy()


def _threshold(loo, labelled, scores, false_alarm_rate: float) -> dict:
    """Best F1 when defects are known; else a quantile of the held-out good scores (leave-one-out and test/good)."""
    held_out_good = np.concatenate([loo, [s for s, x in zip(scores, labelled) if not x.anomalous]])
    if any(sample.anomalous for sample in labelled):
        anomalous = [False] * len(loo) + [sample.anomalous for sample in labelled]
        return thresholds.best_f1(np.concatenate([loo, scores]), anomalous)
    return thresholds.from_good(held_out_good, false_alarm_rate)


def _common_size(dataset) -> list[int]:
    sizes = Counter((item["width"], item["height"]) for item in dataset.items if item.get("split") == "train")
    return list(sizes.most_common(1)[0][0]) if sizes else []


def _save(run_dir, model, geometry, chosen_threshold, names, loo, labelled, scores, maps, root, metrics) -> None:
    folder = RunFolder(run_dir)
    with atomic_file(folder.weights) as f:
        f.write(_safetensors_bytes(model))
    atomic_write_json(folder.preprocess, geometry)
    atomic_write_json(folder.threshold, chosen_threshold)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "label", "split", "score", "map_row"])
    writer.writerows([name, "good", "train", f"{score:.6f}", ""] for name, score in zip(names, loo))
    writer.writerows([str(s.path.relative_to(root)), s.label, "test", f"{score:.6f}", i]
                     for i, (s, score) in enumerate(zip(labelled, scores)))
    atomic_write_text(folder.scores, buffer.getvalue())
    with atomic_file(folder.anomaly_maps) as f:
        np.save(f, maps.astype(np.float16))
    atomic_write_json(folder.metrics, metrics)


def _safetensors_bytes(model) -> bytes:
    from safetensors.torch import save

    return save({name: tensor.contiguous() for name, tensor in model.state_dict().items()})


def _summary(metrics: dict) -> str:
    text = f"memory of {metrics['bank']['kept']:,} patches from {metrics['good_images']} good images, threshold " \
           f"{metrics['threshold']:.3f}"
    if metrics.get("image_auroc") is not None:
        text += f"; on the labelled images: image AUROC {metrics['image_auroc']:.3f}"
        if metrics.get("pixel_auroc") is not None:
            text += f", pixel AUROC {metrics['pixel_auroc']:.3f}"
    return f"{text}; {metrics['wall_s']:.1f} s"
