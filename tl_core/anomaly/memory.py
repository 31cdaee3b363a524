"""The memory of normal patches: greedy coreset subsampling and nearest-neighbour patch distances.

The greedy coreset (farthest-point sampling, PatchCore's choice) keeps the patches that cover all the others
best, so a bank a few percent of the size answers nearest-neighbour questions almost as the whole would; it
runs on a random projection of the features, which keeps distances (Johnson–Lindenstrauss) at less cost.
"""
from __future__ import annotations

import math
import time

import torch

# The coreset's projection: 96 dims keep the 31k × dims matrix of 40 images in the CPU's cache (128 did not:
# 5× slower a step) and lost nothing measurable against the full 152 (bench/anomaly.py; 64 lost 0.011 image AUROC)
PROJECTION_DIMS = 96
BANK_MIN, BANK_MAX, BANK_FRACTION = 1000, 16384, 0.03  # bank size: 3 % of the patches, within these bounds
CHUNK = 2048  # query patches per distance block: bounds the memory of a block to CHUNK × bank floats


def bank_size(patches: int, fraction: float = BANK_FRACTION) -> int:
    """How many patches the bank keeps: `fraction` of them, at least BANK_MIN (all when fewer), at most BANK_MAX."""
    return min(patches, max(min(BANK_MIN, patches), min(BANK_MAX, math.ceil(fraction * patches))))


def patch_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distances, queries (n×d) to bank (m×d): n×m, by one matrix product (also in the ONNX graph)."""
    squared = (queries * queries).sum(1, keepdim=True) - 2 * queries @ bank.T + (bank * bank).sum(1)[None]
    return squared.clamp_min(0).sqrt()


@torch.inference_mode()
def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, query_owner: torch.Tensor | None = None,
                      bank_owner: torch.Tensor | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """Each query's distance to its nearest bank patch, in chunks (torch.cdist); with owners given, a query
    ignores the bank patches of its own image (a leave-one-out score against the others)."""
    out = torch.empty(len(queries), device=queries.device)
    for start in range(0, len(queries), chunk):
        block = torch.cdist(queries[start:start + chunk], bank)
        if query_owner is not None:
            block[query_owner[start:start + chunk, None] == bank_owner[None]] = float("inf")
        out[start:start + chunk] = block.min(1).values
    return out


@torch.inference_mode()
def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Indices of `size` patches chosen by greedy farthest-point sampling, and what the choice cost."""
    t0 = time.perf_counter()
    n, dims = features.shape
    if size >= n:
        return torch.arange(n), {"kept": n, "of": n, "seconds": 0.0, "projected_dims": dims}
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same choice on any device
    projected = features
    if dims > PROJECTION_DIMS:
        projection = torch.randn(dims, PROJECTION_DIMS, generator=generator) / math.sqrt(PROJECTION_DIMS)
        projected = features @ projection.to(features.device)
    norms = (projected * projected).sum(1)
    chosen = torch.empty(size, dtype=torch.long, device=features.device)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    nearest = torch.full((n,), float("inf"), device=features.device)
    for step in range(size):
        if step:
            chosen[step] = torch.argmax(nearest)
        centre = projected[chosen[step]]
        distance = norms - 2 * (projected @ centre) + norms[chosen[step]]
        torch.minimum(nearest, distance, out=nearest)
    return chosen.cpu(), {"kept": size, "of": n, "seconds": round(time.perf_counter() - t0, 3),
                    "projected_dims": min(dims, PROJECTION_DIMS)}


@torch.inference_mode()
def leave_one_out_scores(features: torch.Tensor, owner: torch.Tensor, chosen: torch.Tensor, images: int,
                         refine: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each good image's score against the others: (against the bank less its own patches, against every patch
    of the others).

    The first is what a new good image would meet (the bank is all there is at predict time), so the threshold
    reads it. The second is exact and sharper, so the audit reads it: the bank less an image's patches is a
    subset of the others' patches, so its distances are upper bounds; only each image's `refine` patches with
    the largest bounds are measured against every other patch, which finds the maximum whenever it lies among
    them (and the true maximum is never above the largest bound left unmeasured).
    """
    owner, chosen = owner.to(features.device), chosen.to(features.device)
    bounds = nearest_distances(features, features[chosen], owner, owner[chosen]).reshape(images, -1)
    patches = bounds.shape[1]
    top = bounds.topk(min(refine, patches), dim=1).indices + \
        torch.arange(images, device=features.device)[:, None] * patches
    exact = nearest_distances(features[top.flatten()], features, owner[top.flatten()], owner)
    return bounds.amax(1).cpu(), exact.reshape(images, -1).amax(1).cpu()
