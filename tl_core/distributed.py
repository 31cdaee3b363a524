"""One model trained by several processes (GPUs, or CPU processes with gloo): DDP through Lightning Fabric,
behind the Strategy seam.

    torchrun --nproc-per-node 4 -m tl_core.distributed RUN_DIR      (a run prepared as usual)

Why Fabric rather than accelerate: its API is our Strategy seam almost word for word (launch, device,
global_rank, all_reduce, broadcast, barrier), it needs no config file or launcher of its own (it reads
torchrun's environment), and it picks NCCL on GPUs and gloo on CPUs by itself.
Our loop calls the backbone's parts (features, then the head) rather than one forward, so a DDP wrapper's
forward hooks would never fire: the gradients are averaged over the processes after backward instead
(one all-reduce of one flat buffer a step), which is what DDP computes.

Every rank trains on its own share of each epoch's images (`shard`), evaluates the whole validation set
with the same weights, and sees the same numbers and the same STOP (`AgreeAcrossRanks`), so early
stopping, the best checkpoint, the guards and a cancel decide alike everywhere. The run's life is
tl_core.worker's, as for one device: rank 0 alone claims the run, settles its plan (the Auto plan is
measured there, on one device) and writes its folder; the other ranks train on the settled config and
write their copies to a scratch folder that is thrown away.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from . import worker
from .fit.callbacks import Callback, CancelFit
from .fit.strategy import SingleDevice
from .models.devices import autocast_dtype
from .ops.runs import read_config


class FabricDDP(SingleDevice):
    """The Strategy of one process among several; launched by torchrun (or one process alone)."""

    def __init__(self, device: str = "auto"):
        from lightning_fabric import Fabric

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        self.fabric = Fabric(accelerator="cuda" if use_cuda else "cpu", devices=local,
                             num_nodes=max(1, world // local), strategy=_ddp() if world > 1 else "auto")
        self.fabric.launch()
        self.device = self.fabric.device
        self.amp_dtype = autocast_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.rank, self.world_size = self.fabric.global_rank, self.fabric.world_size
        self.is_main = self.rank == 0
        self.agreement: AgreeAcrossRanks | None = None

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients over the processes (DDP's all-reduce), then the usual step."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.world_size > 1 and grads:
            flat = self.fabric.all_reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()
        super().step(optimizer)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of an epoch's (identically shuffled) indices: every rank gets as many, the
        last ones wrapping round to the start, as torch's DistributedSampler pads."""
        per_rank = math.ceil(len(indices) / self.world_size)
        padded = indices.repeat(math.ceil(per_rank * self.world_size / max(len(indices), 1)))[:per_rank * self.world_size]
        return padded[self.rank::self.world_size]

    def all_reduce(self, value: float, op: str = "mean") -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        if op == "max":
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            return tensor.item()
        return self.fabric.all_reduce(tensor, reduce_op=op).item()

    def broadcast(self, obj):
        return self.fabric.broadcast(obj, src=0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's weights and buffers into every rank's copy of `module`."""
        if self.world_size > 1:
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        self.fabric.barrier()

    def close(self) -> None:
        """Leave the process group together: without it a rank still in gloo's background thread when the
        other exits and closes the rendezvous store can abort (SIGABRT) after its work is done."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            self.fabric.barrier()
            torch.distributed.destroy_process_group()

    def callbacks(self, stop_path: Path | None) -> list:
        """First among the listeners: the agreement of the ranks (it also checks STOP, on rank 0's file)."""
        self.agreement = AgreeAcrossRanks(self, stop_path)
        return [self.agreement]

    def facts(self) -> dict:
        return {"distributed": {"world_size": self.world_size, "library": "lightning_fabric",
                                "backend": "nccl" if self.device.type == "cuda" else "gloo"}}


# The other ranks wait in a collective while rank 0 measures the Auto plan's candidates, which may take
# longer than torch's default 30 minutes on a large set.
PLAN_WAIT = timedelta(hours=24)


def _ddp():
    from lightning_fabric.strategies import DDPStrategy

    return DDPStrategy(timeout=PLAN_WAIT)


class AgreeAcrossRanks(Callback):
    """First among the callbacks: every rank sees the mean of the ranks' losses and accuracies and rank 0's
    STOP, and starts each phase from rank 0's weights, so every decision taken on these numbers (early
    stopping, best checkpoint, divergence and NaN guards, cancel) is the same on every rank."""

    EPOCH_NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc")

    def __init__(self, strategy: FabricDDP, stop_path: Path | None):
        self.strategy, self.stop_path = strategy, stop_path
        self.fit = None  # the fit it last heard from, for the rank's report when the run ends

    def __call__(self, event: str, info: dict, fit) -> None:
        self.fit = fit if fit is not None else self.fit
        super().__call__(event, info, fit)

    def on_fit_start(self, info, fit):
        self._stop()

    def on_phase_start(self, info, fit):
        self.strategy.broadcast_module(fit.model)

    def on_batch_end(self, info, fit):
        if info.get("phase") != "finetune":  # feature extraction may be cached on one rank, not another
            return
        info["loss"] = self.strategy.all_reduce(info["loss"])
        self._stop()

    def on_epoch_end(self, info, fit):
        for key in self.EPOCH_NUMBERS:
            if info.get(key) is not None:
                info[key] = self.strategy.all_reduce(info[key])
        self._stop()

    def _stop(self):
        seen = 1.0 if self.stop_path is not None and self.stop_path.exists() else 0.0
        if self.strategy.all_reduce(seen, op="max") > 0:
            raise CancelFit("stopped by the user")


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of every weight: the same on every rank when they agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def run(run_dir: str | Path) -> dict:
    """Train the prepared run with every process torchrun started: tl_core.worker's run, this strategy given
    (the main process claims the run, settles its plan and writes its folder); each process then reports
    the epoch it kept and a digest of its weights, which must agree."""
    run_dir = Path(run_dir)
    strategy = FabricDDP(read_config(run_dir).device)
    metrics = worker.run(run_dir, on_wait=lambda message: print(message, flush=True), strategy=strategy)
    fit = strategy.agreement.fit if strategy.agreement is not None else None
    if fit is not None and fit.model is not None:
        best = (fit.best or {}).get("epoch")
        print(f"rank {strategy.rank}: kept epoch {best}, weights {weights_digest(fit.model)}", flush=True)
    strategy.close()  # not on an error: a barrier there could wait forever for a rank that is gone
    return metrics


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torchrun --nproc-per-node N -m tl_core.distributed RUN_DIR")
    run(sys.argv[1])
