"""The detector: a timm backbone's last three stages, a feature pyramid on them, and torchvision's FCOS head.

torchvision composes detectors (FCOS(backbone, num_classes, anchor_generator=...)); the backbone here is any
timm model that answers `forward_intermediates` (nearly all CNNs of timm 1.x), built through
tl_core.models.backbones so the embedded EfficientNet-Lite0 weights load offline. The classifier's own model is kept
(pruned after its last used stage) rather than timm's `features_only` wrapper, because the wrapper drops
`group_matcher`: through it the detector answers the same layer-group question as a classifier
(tl_core.models.layers), with the pyramid and the detection head as the "head" group that always trains.

Loss (sigmoid focal, GIoU, centre-ness), box coding and NMS are torchvision's. Images reach the model already
resized to a square `image_size` (tl_core.detect.batches), so torchvision's own resize is the identity.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from tl_core.models.backbones import architecture_for, create_model

PYRAMID_CHANNELS = 64  # small sets and CPUs: torchvision's 256 channels quadruple the head's cost for nothing
STAGES = 3  # strides 8, 16, 32 (then P6, P7 from the pyramid): objects of ~8 px to the whole picture
SCORE_THRESH = 0.05  # what the model returns; the app's slider and predict's threshold cut further
NMS_THRESH = 0.5
BODY = "backbone.body."  # where the timm backbone's parameters sit in the detector
DETECTIONS_PER_IMAGE = 100


class TimmPyramid(nn.Module):
    """A timm backbone's last STAGES stage outputs through a feature pyramid (+P6, P7): torchvision's
    backbone contract (`out_channels`, an ordered dict of feature maps)."""

    def __init__(self, body: nn.Module, out_channels: int = PYRAMID_CHANNELS):
        super().__init__()
        info = body.feature_info
        self.indices = list(range(len(info) - STAGES, len(info)))
        body.prune_intermediate_layers(self.indices, prune_head=True, prune_norm=True)
        self.body = body
        self.strides = [info[i]["reduction"] for i in self.indices]
        self.fpn = FeaturePyramidNetwork([info[i]["num_chs"] for i in self.indices], out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels
        self.given_stages = None  # the body's outputs computed beforehand, when it is frozen (see body_outputs)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        stages = self.given_stages if self.given_stages is not None else self.body_outputs(x)
        return self.fpn(OrderedDict((str(i), stage) for i, stage in enumerate(stages)))

    def body_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)


@contextmanager
def given_stages(model: "Detector", stages: list[torch.Tensor]):
    """Within it, `model` reads its backbone's outputs from `stages` (a frozen body's, computed once) instead of
    running the body: the images still go through torchvision's transform, anchors and losses as usual."""
    model.backbone.given_stages = stages
    try:
        yield
    finally:
        model.backbone.given_stages = None


@torch.no_grad()
def frozen_body_outputs(model: "Detector", pixels: torch.Tensor, device, batch_size: int = 32) -> list[torch.Tensor]:
    """The body's outputs for uint8 N×3×S×S `pixels`, normalised exactly as the detector's transform does."""
    outputs = None
    was_training = model.training
    model.eval()
    for start in range(0, len(pixels), batch_size):
        images = [p.to(device).float() / 255 for p in pixels[start:start + batch_size]]
        batch = model.transform(images)[0].tensors
        stages = model.backbone.body_outputs(batch)
        outputs = stages if outputs is None else [torch.cat([o, s]) for o, s in zip(outputs, stages)]
    model.train(was_training)
    return outputs


class Detector(FCOS):
    """FCOS on a TimmPyramid, answering timm's `group_matcher` with the backbone's own groups."""

    def group_matcher(self, coarse: bool = True):
        """timm's matcher of the body, its patterns moved under "backbone.body.": the body's groups in order,
        everything else (pyramid and detection head) unmatched, so last: the group tl_core.models.layers calls "head"."""
        inner = self.backbone.body.group_matcher(coarse=coarse)
        if callable(inner):
            return lambda name: inner(name[len(BODY):]) if name.startswith(BODY) else (math.inf,)
        return {group: _prefixed(spec) for group, spec in inner.items()}


def layer_groups(model: Detector) -> list:
    """tl_core.models.layers' groups of the detector, named as the classifier's groups of the same backbone
    ("stem", "blocks.3", ..., "head"), so a plan chosen on the Layers page means the same layers here."""
    from dataclasses import replace

    from tl_core.models import layers

    return [replace(group, name=group.name.removeprefix(BODY)) for group in layers.layer_groups(model)]


def _prefixed(spec):
    """A timm matcher spec (a pattern, or a list of (pattern, suffix)) anchored under BODY."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return _prefixed_pattern(spec)
    return [(_prefixed_pattern(pattern), suffix) for pattern, suffix in spec]


def _prefixed_pattern(pattern: str) -> str:
    # timm's patterns are matched at the start of a name; their own "^" anchors move behind the prefix
    return "^" + re.escape(BODY) + "(?:" + re.sub(r"(?<![\\\[])\^", "", pattern) + ")"


def build(backbone: str, num_classes: int, weights: str, image_size: int) -> Detector:
    """A detector for `num_classes` object classes on timm `backbone` with `weights` (embedded | hub | none | file)."""
    body = create_model(backbone, 0, weights=weights)
    return _assemble(body, num_classes, image_size)


def _assemble(body: nn.Module, num_classes: int, image_size: int) -> Detector:
    from tl_core.models.backbones import data_config

    preprocess = data_config(body)
    pyramid = TimmPyramid(body)
    strides = pyramid.strides + [pyramid.strides[-1] * 2, pyramid.strides[-1] * 4]  # P6, P7
    # FCOS reads one "anchor" size per level as that level's stride (its scale ranges are 4× and 8× it).
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    return Detector(pyramid, num_classes, min_size=image_size, max_size=image_size,
                    image_mean=list(preprocess["mean"]), image_std=list(preprocess["std"]),
                    anchor_generator=anchors, score_thresh=SCORE_THRESH, nms_thresh=NMS_THRESH,
                    detections_per_img=DETECTIONS_PER_IMAGE)


def rebuild(backbone: str, weights: str, num_classes: int, image_size: int) -> Detector:
    """The architecture of a saved detector, without downloading anything: its weights come from the run."""
    body = create_model(architecture_for(backbone, weights), 0, weights="none")
    return _assemble(body, num_classes, image_size)
