"""Where training runs: the Strategy seam of the fit loop.

A strategy owns the device, mixed precision, backward and the optimiser step, and the questions
a distributed run adds: which images this process sees (`shard`), whether it is the main process
(the one that writes files), all-reduce and barrier. `SingleDevice` is today's; a distributed one
(torchrun/DDP through Lightning Fabric or accelerate) implements the same methods, so the loop does
not change.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .devices import autocast_dtype, pick_device


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
