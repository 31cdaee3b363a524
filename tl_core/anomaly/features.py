"""Locally aware patch features from mid-level stages of any timm backbone (PatchCore's features).

Each chosen stage's map is averaged over a 3×3 neighbourhood (so a patch knows its surroundings), the deeper
maps are upsampled to the first one's grid, and the channels are concatenated: one feature vector per patch.
Mid-level stages (stride 8 and 16) are general enough to describe any texture and fine enough to localise.
The backbone is cut after the deepest chosen stage, so the later stages cost nothing. Images are resized
whole (never cropped), so a defect at the border is still seen and the map lies over the whole image.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tl_core.models import backbones
from tl_core.data.datasets import open_image
from tl_core.ops.storage import workspace_root

DEFAULT_LAYERS = (2, 3)  # feature_info indices: Lite0's stride-8 and stride-16 stages (40 + 112 channels)
NEIGHBOURHOOD = 3  # the patch's local average window, in feature cells


class PatchFeatures(torch.nn.Module):
    """RGB pixels (B×3×H×W, 0–255 floats) → patch features (B×C×h×w) on the first chosen stage's grid."""

    def __init__(self, body: torch.nn.Module, layers: tuple[int, ...], mean, std):
        super().__init__()
        self.layers = [int(i) for i in layers]
        body.prune_intermediate_layers(self.layers, prune_head=True)
        self.body = body
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.body.forward_intermediates((pixels - self.mean) / self.std, indices=self.layers,
                                               intermediates_only=True)
        size = maps[0].shape[-2:]
        pooled = []
        for stage in maps:
            # zeros count at the border (PatchCore's own pooling): every image's border patches shrink alike, so
            # the arbitrary content at a crop's edge stops dominating the image's largest patch distance
            # (bench/anomaly.py: averaging over the cells inside only lost up to 0.15 image AUROC a texture)
            stage = F.avg_pool2d(stage, NEIGHBOURHOOD, stride=1, padding=NEIGHBOURHOOD // 2, count_include_pad=True)
            if stage.shape[-2:] != size:
                stage = F.interpolate(stage, size=size, mode="bilinear", align_corners=False)
            pooled.append(stage)
        return torch.cat(pooled, dim=1)


def build_extractor(backbone: str, weights: str, layers=DEFAULT_LAYERS, image_size: int | None = None,
                    ) -> tuple[PatchFeatures, dict]:
    """The patch feature extractor of `backbone` with `weights` (tl_core.models.backbones sources), and its geometry."""
    body = backbones.create_model(backbone, 0, weights=weights)
    preprocess = backbones.data_config(body, image_size)
    info = body.feature_info
    stages = info if isinstance(info, list) else info.get_dicts()
    bad = [i for i in layers if not 0 <= int(i) < len(stages)]
    if bad:
        raise ValueError(f"layers {bad}: {backbone} has stages 0..{len(stages) - 1}")
    if not hasattr(body, "forward_intermediates"):
        raise ValueError(f"{backbone}: this timm model gives no stage features (no forward_intermediates)")
    extractor = PatchFeatures(body, tuple(layers), preprocess["mean"], preprocess["std"]).eval()
    size = preprocess["input_size"][-1]
    geometry = {"architecture": backbones.architecture(body), "backbone": backbone, "layers": [int(i) for i in layers],
                "input_size": [3, size, size], "mean": list(preprocess["mean"]), "std": list(preprocess["std"]),
                "channels": [int(stages[i]["num_chs"]) for i in layers],
                "reduction": int(stages[layers[0]]["reduction"]), "resize": "whole image, bilinear"}
    return extractor, geometry


def rebuild_extractor(geometry: dict) -> PatchFeatures:
    """An extractor of the same architecture and stages with untrained weights (a run's state dict fills them)."""
    body = backbones.create_model(geometry["architecture"], 0, weights="none")
    return PatchFeatures(body, tuple(geometry["layers"]), geometry["mean"], geometry["std"]).eval()


def image_to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """One RGB image resized whole to size×size: 1×3×size×size float 0–255, as the extractor reads it."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1).copy())[None]


def load_pixels(paths: list[Path], size: int) -> torch.Tensor:
    """Images decoded safely (tl_core.data.datasets.open_image) and resized whole: N×3×size×size float 0–255."""
    return torch.cat([image_to_pixels(open_image(path, str(path), draft_size=size), size) for path in paths]) \
        if paths else torch.zeros(0, 3, size, size)


@torch.inference_mode()
def extract(extractor: PatchFeatures, paths: list[Path], geometry: dict, key: str = "", batch_size: int = 16,
            on_batch=None) -> torch.Tensor:
    """Patch features of every image (N×C×h×w), computed once and cached in the workspace per files and settings.

    `on_batch(done, total)` is told after each batch (the fit's progress and its STOP check).
    """
    cache = workspace_root() / "cache" / "features" / f"anomaly-{_cache_key(paths, geometry, key)}.npy"
    if cache.is_file():
        try:
            cached = torch.from_numpy(np.load(cache))
            if on_batch:
                on_batch(len(paths), len(paths))
            return cached
        except (OSError, ValueError):
            cache.unlink(missing_ok=True)  # a damaged cache is recomputed, never trusted
    size = geometry["input_size"][-1]
    chunks = []
    for start in range(0, len(paths), batch_size):
        pixels = load_pixels(paths[start:start + batch_size], size).to(extractor.mean.device)
        chunks.append(extractor(pixels).cpu())
        if on_batch:
            on_batch(min(start + batch_size, len(paths)), len(paths))
    features = torch.cat(chunks) if chunks else torch.zeros(0)
    _save_atomically(cache, features.numpy())
    return features


def _cache_key(paths: list[Path], geometry: dict, key: str) -> str:
    digest = hashlib.sha256(json.dumps({k: geometry[k] for k in ("architecture", "layers", "input_size")}).encode())
    digest.update(key.encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _save_atomically(path: Path, array: np.ndarray) -> None:
    from tl_core.ops.storage import atomic_file

    with atomic_file(path, size_hint=array.nbytes) as f:
        np.save(f, array)


def stages(backbone: str) -> list[dict]:
    """The backbone's stages a bank can read: index, stride (px per feature cell) and channels."""
    import timm

    body = timm.create_model(backbones.architecture_for(backbone, backbones.default_weights(backbone)),
                             pretrained=False, num_classes=0)
    info = body.feature_info if isinstance(body.feature_info, list) else body.feature_info.get_dicts()
    return [{"index": i, "stride": int(stage["reduction"]), "channels": int(stage["num_chs"])}
            for i, stage in enumerate(info)]
