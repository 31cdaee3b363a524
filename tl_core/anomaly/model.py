"""The anomaly model as one plain torch module: patch extractor, memory bank and scorer (anomalib's torch_model).

Predict and export use it with no fit loop. From RGB pixels (0–255) it returns each image's score (the largest
patch distance to the bank) and its anomaly map at the input's resolution (upsampled, Gaussian-smoothed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tl_core.anomaly.features import PatchFeatures
from tl_core.anomaly.memory import patch_distances

MAP_SIGMA = 4.0  # px of the smoothing, PatchCore's


class AnomalyModel(torch.nn.Module):
    """pixels B×3×S×S (0–255) → (scores B, maps B×S×S)."""

    def __init__(self, extractor: PatchFeatures, bank: torch.Tensor, sigma: float = MAP_SIGMA):
        super().__init__()
        self.extractor = extractor
        self.register_buffer("bank", bank.contiguous())
        radius = max(1, int(4 * sigma + 0.5))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
        self.register_buffer("kernel", (taps / taps.sum()).view(1, 1, 1, -1))

    def patch_scores(self, pixels: torch.Tensor) -> torch.Tensor:
        """Each patch's distance to its nearest normal patch: B×h×w."""
        features = self.extractor(pixels)
        batch, dims, height, width = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(-1, dims)
        # the matrix product finds the nearest bank patch; its distance is then measured directly, because the
        # product's form loses precision on small distances (and would differ between runtimes there)
        nearest_index = patch_distances(flat, self.bank).argmin(dim=1)
        nearest = (flat - self.bank[nearest_index]).norm(dim=1)
        return nearest.reshape(batch, height, width)

    def smooth_map(self, patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Patch scores upsampled to `size` and smoothed by a separable Gaussian: B×H×W."""
        up = F.interpolate(patch_scores[:, None], size=size, mode="bilinear", align_corners=False)
        radius = self.kernel.shape[-1] // 2
        up = F.conv2d(F.pad(up, (radius, radius, 0, 0), mode="replicate"), self.kernel)
        up = F.conv2d(F.pad(up, (0, 0, radius, radius), mode="replicate"), self.kernel.transpose(2, 3))
        return up[:, 0]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.patch_scores(pixels)
        return patch.flatten(1).amax(dim=1), self.smooth_map(patch, tuple(pixels.shape[-2:]))


def bank_megabytes(bank: torch.Tensor) -> float:
    return round(bank.numel() * bank.element_size() / 2**20, 2)
