"""Prototype heads for few-shot data: each class is the mean of its images' standardised features.

With one to a few images a class, a logistic regression has almost nothing to fit; the nearest class
mean (a prototypical network's classifier, on frozen features) needs no fitting at all and works from
one image a class. Euclidean distance, not cosine: -‖z - μ‖² = 2z·μ - ‖μ‖² - ‖z‖², and ‖z‖² is the same
for every class, so the head folds exactly into a plain Linear (predict and export stay as they are);
a cosine head would need the features normalised inside the model.

PrototypeFits has HeadFits' interface, so the probe phase runs it unchanged: each epoch is one step
along a path of scales (logits = -scale/2 · ‖z - μ‖²), from flat to sharp, and validation picks the
scale, which sets how confident the probabilities are, not which class wins.
"""
from __future__ import annotations

import torch

from .probe import PROBE_STD_FLOOR

SCALE_START, SCALE_STEP = 0.25, 2.0  # × 1/features: the first epoch's scale, and its growth an epoch
# "auto" picks prototypes while the smallest class has at most this many images (bench/fewshot.py).
PROTOTYPES_UP_TO = 5
MISSING = -1e4  # the logit of a class a fit has no image of (a fold that held out a class's only images)


class PrototypeFits:
    """One prototype head per training set in `train_masks` (fits × images), side by side."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, train_masks: torch.Tensor, num_classes: int,
                 class_weights: torch.Tensor | None = None):
        # class_weights keep HeadFits' signature: a class's prototype is its mean whatever its count, and the
        # nearest mean has no prior toward big classes, so there is nothing to weight.
        weights = train_masks.float()
        count = weights.sum(1, keepdim=True)
        self.mean = weights @ feats / count
        variance = (weights @ feats.pow(2) / count - self.mean.pow(2)).clamp_min(0)
        std = variance.sqrt()
        self.std = std.clamp_min(PROBE_STD_FLOOR * std.median(1, keepdim=True).values + 1e-6)
        self.x = (feats[None] - self.mean[:, None]) / self.std[:, None]  # fits × images × features
        onehot = torch.nn.functional.one_hot(labels, num_classes).float()  # images × classes
        members = weights[:, :, None] * onehot[None]  # fits × images × classes
        self.class_count = members.sum(1)  # fits × classes
        self.prototypes = (members.transpose(1, 2) @ self.x) / self.class_count.clamp_min(1)[..., None]
        self.y, self.train_masks = labels, train_masks
        self.unit = 1.0 / feats.shape[1]
        self.scale = SCALE_START * self.unit / SCALE_STEP

    def step(self, l2: float = 0.0, label_smoothing: float = 0.0) -> None:
        """The next, sharper scale (the arguments keep HeadFits' signature; nothing is fitted)."""
        self.scale *= SCALE_STEP

    def logits(self) -> torch.Tensor:
        """fits × images × classes: -scale/2 · squared distance to each class's prototype."""
        distance = torch.cdist(self.x, self.prototypes).pow(2)
        logits = -0.5 * self.scale * distance
        return logits.masked_fill(self.class_count[:, None, :] == 0, MISSING)

    @torch.no_grad()
    def validation_log_probs(self, val_sets: list[torch.Tensor]) -> torch.Tensor:
        log_probs = self.logits().log_softmax(-1)
        out = torch.zeros(log_probs.shape[1:])
        for f, val in enumerate(val_sets):
            out[val] = log_probs[f, val]
        return out

    @torch.no_grad()
    def copy_to(self, head: torch.nn.Linear, fit: int = -1) -> None:
        """logits = scale·z·μ - scale/2·‖μ‖² (the ‖z‖² term is equal for all classes), with z = (x - mean)/std."""
        weight_z = self.scale * self.prototypes[fit]  # classes × features
        bias = -0.5 * self.scale * self.prototypes[fit].pow(2).sum(1)
        bias = bias.masked_fill(self.class_count[fit] == 0, MISSING)
        head.weight.copy_(weight_z / self.std[fit])
        head.bias.copy_(bias - (self.mean[fit] / self.std[fit]) @ weight_z.T)


def head_for(requested: str, class_counts: list[int]) -> str:
    """"logistic" or "prototype": the requested head, or for "auto" the one that measured better at this size."""
    if requested != "auto":
        return requested
    return "prototype" if min(class_counts) <= PROTOTYPES_UP_TO else "logistic"


LIVE_SCALE_STEPS = 4  # the scale a live classifier uses (no validation to pick it): SCALE_START × 2³ / features


class LiveClassifier:
    """The instant loop of a live demo: each labelled image's frozen features are computed once (one
    forward pass), and the prototypes follow at once, with no training step; `predict` answers from
    the images given so far. Runs on the CPU: a webcam picture at a time needs no GPU."""

    def __init__(self, backbone: str = "tf_efficientnet_lite0", weights: str = "embedded"):
        from ..models import backbones, multilayer

        body = backbones.create_model(backbone, 2, weights=weights)
        kind = "multi-layer" if multilayer.supports(body) else "last"
        self.model = multilayer.build(body, 2, kind).eval()
        self.preprocess = backbones.data_config(self.model)
        self.feats, self.labels, self.classes = [], [], []

    @torch.inference_mode()
    def features(self, image) -> torch.Tensor:
        """1 × features of a PIL image, preprocessed as a run would."""
        from ..data.augment import normalize
        from ..data.datasets import prepare_image

        size = self.preprocess["input_size"][-1]
        pixels = prepare_image(image, size, self.preprocess["crop_pct"], self.preprocess["interpolation"])
        x = normalize(pixels[None], self.preprocess["mean"], self.preprocess["std"])
        return self.model.forward_features(x).float()

    def add(self, image, label: str, features: torch.Tensor | None = None) -> None:
        """Learn one labelled image (its features, if already computed by `predict`)."""
        if label not in self.classes:
            self.classes.append(label)
        self.feats.append(self.features(image) if features is None else features)
        self.labels.append(self.classes.index(label))

    def predict(self, image, features: torch.Tensor | None = None) -> list[dict]:
        """[{"label", "prob"}], most likely first; [] before any image was added."""
        if not self.classes:
            return []
        x = self.features(image) if features is None else features
        fits = PrototypeFits(torch.cat([*self.feats, x]), torch.tensor([*self.labels, 0]),
                             torch.tensor([[True] * len(self.labels) + [False]]), len(self.classes))
        for _ in range(LIVE_SCALE_STEPS):
            fits.step()
        probs = fits.logits()[0, -1].softmax(0)
        order = probs.argsort(descending=True)
        return [{"label": self.classes[k], "prob": float(probs[k])} for k in order]
