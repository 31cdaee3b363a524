"""Where training runs: the Strategy seam of the fit loop.

A strategy owns the device, mixed precision, backward and the optimiser step, and the questions
a distributed run adds: which images this process sees (`shard`), whether it is the main process
(the one that writes files), all-reduce, broadcast and barrier, and the listeners that make processes
agree (`callbacks`). `SingleDevice` is one process; tl_core.distributed.FabricDDP (torchrun/DDP through
Lightning Fabric) implements the same methods, so neither the loop nor the worker changes.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..models.devices import autocast_dtype, pick_device


class SingleDevice:
    """One CPU, CUDA or MPS device; bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing)."""

    is_main = True
    world_size = 1

    def __init__(self, device: str = "auto"):
        self.device = pick_device(device)
        self.amp_dtype = autocast_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """The part of an epoch's indices this process trains on: all of them."""
        return indices

    def all_reduce(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        pass

    def broadcast(self, obj):
        """The main process's `obj`, on every process: here, itself."""
        return obj

    def callbacks(self, stop_path) -> list:
        """Listeners this strategy puts first (a distributed one makes the processes agree); none here."""
        return []

    def facts(self) -> dict:
        """What the run folder's facts.json records of the strategy (a distributed one: world size, backend)."""
        return {}

    def batch_size_that_fits(self, batch_size: int, forward_backward, on_smaller) -> int:
        """On CUDA, halve the batch size until `forward_backward(batch_size)` fits in memory; `on_smaller(message)`
        says each time it had to. Elsewhere the batch size as asked."""
        if self.device.type != "cuda":
            return batch_size
        while True:
            try:
                forward_backward(batch_size)
                return batch_size
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                if batch_size == 1:
                    raise
                on_smaller(f"batch size {batch_size} does not fit in GPU memory; using {batch_size // 2}")
                batch_size //= 2


CUDA_CHANNELS_LAST_MIN_PASSES = 50_000  # images × epochs from which channels-last repays its start-up on CUDA


def channels_last_helps(backbone: str, device: torch.device, image_passes: int) -> bool:
    """Whether channels-last memory pays, by measurement.

    CPU: convnets gain (Lite0 on 2 cores: 27 → 36 images/s forward), ConvNeXt's LayerNorm loses.
    CUDA: the first channels-last pass of a fresh process costs ~3 s of kernel start-up on an H100
    (NCHW: 0.4 s) for ~0.01 s saved per 224 images afterwards, so it pays only on long runs.
    ViTs have no convolutions to gain from it.
    """
    if any(k in backbone for k in ("vit", "deit", "swin", "eva", "beit", "levit")):
        return False
    if device.type == "cuda":
        return image_passes >= CUDA_CHANNELS_LAST_MIN_PASSES
    return device.type == "cpu" and "convnext" not in backbone
