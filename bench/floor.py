"""The physical floor on this machine, and each recipe's wall as a multiple of it.

Floor: one pure forward pass over all the recipe's images, and one forward+backward(+AdamW step)
epoch, both on pre-loaded, pre-normalised tensors, in the best layout (channels-last where it helps).
Then the recipes: feature extraction (whole wall, cold caches) against the forward floor, and a
full fine-tune epoch's training part against the forward+backward floor. Also the cost of writing
events. Writes bench/results/floor-<device>.json.

    python bench/floor.py [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data import bench_folders  # noqa: E402
from tl_core.models import backbones
from tl_core import worker  # noqa: E402
from tl_core.data.augment import normalize  # noqa: E402
from tl_core.fit.callbacks import EventLog  # noqa: E402
from tl_core.config import RunConfig  # noqa: E402
from tl_core.data.datasets import decode_images, ingest_folder  # noqa: E402
from tl_core.models.devices import autocast_dtype, describe  # noqa: E402
from tl_core.ops.runs import create_run, read_events  # noqa: E402

BACKBONE = "efficientnet_lite0"
BATCH = 32


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device):
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)


def floors(pixels: torch.Tensor, labels: torch.Tensor, n_train: int, device: torch.device) -> dict:
    model = backbones.create_model(BACKBONE, 10, weights="embedded").to(device).to(memory_format=torch.channels_last)
    cfg = backbones.data_config(model)
    x_all = normalize(pixels.to(device), cfg["mean"], cfg["std"]).contiguous(memory_format=torch.channels_last)
    y_all = labels.to(device)
    model.eval()

    def forward_pass():
        with torch.inference_mode(), _autocast(device):
            for i in range(0, len(x_all), BATCH):
                model(x_all[i:i + BATCH])

    forward = _best_of(forward_pass, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x_train, y_train = x_all[:n_train], y_all[:n_train]

    def step(i):
        with _autocast(device):
            loss = F.cross_entropy(model(x_train[i:i + BATCH]).float(), y_train[i:i + BATCH])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_epoch():
        for i in range(0, n_train, BATCH):
            step(i)

    fwd_bwd = _best_of(train_epoch, device)
    return {"forward_all_s": forward, "images_all": len(x_all), "fwd_bwd_epoch_s": fwd_bwd, "images_train": n_train}


def _best_of(work, device, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` timed runs, after one untimed run (every shape and kernel warm)."""
    work()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def recipe(train_dir: Path, device: str, **changes) -> tuple[dict, list[dict], float]:
    os.environ["TL_STUDIO_HOME"] = tempfile.mkdtemp(prefix="tl_floor_")
    start = time.perf_counter()
    dataset = ingest_folder(train_dir)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), backbone=BACKBONE, device=device, **changes))
    metrics = worker.run(run_dir)
    return metrics, read_events(run_dir), time.perf_counter() - start


def _phases(events: list[dict]) -> dict:
    """Seconds from the run's start to its first event, in the frozen-feature pass, the probe, and saving."""
    start = events[0]["t"] - events[0].get("elapsed", 0)
    fit_start = next(e["t"] for e in events if e["event"] == "fit_start")
    features_end = max((e["t"] for e in events if e.get("phase") == "features"), default=fit_start)
    probe_end = max(e["t"] for e in events if e["event"] == "epoch_end")
    return {"setup (data, model)": fit_start - start, "frozen features": features_end - fit_start,
            "probe": probe_end - features_end, "saving": events[-1]["t"] - probe_end}


def event_cost(n: int = 2000) -> float:
    """Seconds to write one batch_end event line (what the loop pays per batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = EventLog(Path(tmp) / "events.jsonl")
        info = {"phase": "finetune", "epoch": 3, "step": 96, "batch": 5, "batches": 7, "loss": 0.4123,
                "lr": 1e-3, "images_per_s": 61.2}
        t = time.perf_counter()
        for _ in range(n):
            log("batch_end", info, None)
        return (time.perf_counter() - t) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    train_dir, _ = bench_folders(Path(args.data) if args.data else None)
    paths = sorted(train_dir.glob("*/*.png"))
    classes = sorted({p.parent.name for p in paths})
    labels = torch.tensor([classes.index(p.parent.name) for p in paths])
    pixels = decode_images(paths, 224)
    n_train = int(len(paths) * 0.8)
    floor = floors(pixels, labels, n_train, device)
    print(f"floor: pure forward over {floor['images_all']} images {floor['forward_all_s']:.2f} s; "
          f"forward+backward epoch over {n_train} images {floor['fwd_bwd_epoch_s']:.2f} s", flush=True)

    _, fe_events, fe_wall = recipe(train_dir, args.device, freeze="head", epochs=10)
    fe_ratio = fe_wall / floor["forward_all_s"]
    print(f"feature extraction (cold): wall {fe_wall:.2f} s = {fe_ratio:.2f}x the pure forward pass", flush=True)
    fe_parts = _phases(fe_events)
    print("  of which: " + ", ".join(f"{k} {v:.2f} s" for k, v in fe_parts.items()), flush=True)

    _, ft_events, ft_wall = recipe(train_dir, args.device, freeze="all", epochs=3, probe_first=False,
                                   early_stopping=0)
    # This VM's speed drifts by up to 20 % within minutes: measure the bare loop again after the
    # recipe, and hold the recipe's best epoch against the best bare epoch of either side.
    again = floors(pixels, labels, n_train, device)
    floor["fwd_bwd_epoch_s"] = min(floor["fwd_bwd_epoch_s"], again["fwd_bwd_epoch_s"])
    floor["forward_all_s_after"] = again["forward_all_s"]
    best_forward = min(floor["forward_all_s"], again["forward_all_s"])
    fe_ratio = fe_wall / best_forward
    print(f"feature extraction against the best forward pass measured ({best_forward:.2f} s): {fe_ratio:.2f}x",
          flush=True)
    epochs = [e for e in ft_events if e["event"] == "epoch_end" and e["phase"] == "finetune"]
    train_s = min(e["train_seconds"] for e in epochs)
    ft_ratio = train_s / floor["fwd_bwd_epoch_s"]
    print(f"full fine-tune epoch (training part, best of {len(epochs)}): {train_s:.2f} s = {ft_ratio:.2f}x "
          f"the bare forward+backward loop; with validation {min(e['seconds'] for e in epochs):.2f} s", flush=True)

    per_event = event_cost()
    batches = max(e.get("batches", 1) for e in ft_events if e["event"] == "batch_end" and "batches" in e)
    event_share = per_event * batches / train_s
    print(f"event writing: {per_event * 1e6:.0f} us per batch event = {event_share:.3%} of a fine-tune epoch",
          flush=True)
    report = {"device": describe(device), "cpus": os.cpu_count(), "torch": torch.__version__, **floor,
              "fe_wall_s": fe_wall, "fe_over_forward": fe_ratio, "fe_phases_s": fe_parts, "ft_epoch_train_s": train_s,
              "ft_epoch_over_fwd_bwd": ft_ratio, "event_s": per_event, "event_share_of_epoch": event_share}
    out = HERE / "results" / f"floor-{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
