"""A finished detection run answering pictures: boxes with labels and scores, in the picture's own pixels.

The kind's `predictor(run_dir)`; evaluate and export use the same object, so the scores they check are the
ones a user sees.
"""
from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from PIL import Image

from tl_core.detect import batches
from tl_core.detect.model import rebuild
from tl_core.ops.runs import RunFolder
from tl_core.ops.storage import read_json

SCORE_THRESHOLD = 0.3  # boxes below it are not shown by default (the app's slider moves it)


class DetectPredictor:
    """The detector of `run_dir`, on the CPU unless told otherwise."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        folder = RunFolder(run_dir)
        if not folder.weights.is_file():
            raise FileNotFoundError(f"{run_dir}: no trained weights (the run has not finished)")
        self.classes = list(read_json(folder.labels)["classes"])
        self.preprocess = read_json(folder.preprocess)
        self.size = int(self.preprocess["image_size"])
        self.device = torch.device(device)
        self.model = rebuild(self.preprocess["backbone"], self.preprocess["weights"], len(self.classes), self.size)
        self.model.load_state_dict(safetensors.torch.load_file(str(folder.weights)))
        self.model.to(self.device).eval()

    @torch.no_grad()
    def detect_pixels(self, pixels: torch.Tensor) -> list[dict]:
        """Raw detections (boxes in input pixels, scores, label indices) of N×3×S×S uint8 pictures."""
        images = [p.to(self.device).float() / 255 for p in pixels]
        return [{k: v.cpu() for k, v in out.items()} for out in self.model(images)] if images else []

    def predict(self, picture: Image.Image, score_threshold: float = SCORE_THRESHOLD) -> dict:
        """{"boxes": [{"label", "score", "box": [x0, y0, x1, y1]}], "size": [w, h]}, best first, in picture pixels."""
        width, height = picture.size
        raw = self.detect_pixels(batches.resize_picture(picture, self.size)[None])[0]
        return {"boxes": to_boxes(raw, self.classes, self.size / width, self.size / height, score_threshold),
                "size": [width, height]}

    def predict_boxset(self, boxset, batch_size: int = 16) -> tuple[list[dict], list[dict], list[dict]]:
        """(predictions, targets, skipped) of every picture of a box dataset, in input pixels; the dataset's
        classes matched to the model's by name (others are not scored)."""
        data = batches.load(boxset, self.size)
        index_of = {name: k for k, name in enumerate(self.classes)}
        targets = [batches.usable_targets(image, index_of, sx, sy, self.size)
                   for image, (sx, sy) in zip(_by_file(boxset, data.files), data.scales)]
        predictions = []
        for start in range(0, len(data.pixels), batch_size):
            predictions += self.detect_pixels(data.pixels[start:start + batch_size])
        return predictions, targets, data.skipped


def to_boxes(raw: dict, classes: list[str], sx: float, sy: float, score_threshold: float) -> list[dict]:
    """Detections at the input size → JSON boxes in the picture's pixels (the inverse of the stretch)."""
    found = []
    for box, score, label in zip(raw["boxes"].tolist(), raw["scores"].tolist(), raw["labels"].tolist()):
        if score < score_threshold:
            continue
        found.append({"label": classes[int(label)], "score": round(float(score), 4),
                      "box": [round(box[0] / sx, 1), round(box[1] / sy, 1), round(box[2] / sx, 1), round(box[3] / sy, 1)]})
    return sorted(found, key=lambda item: -item["score"])


def _by_file(boxset, files: list[str]) -> list[dict]:
    images = {image["file"]: image for image in boxset.images}
    return [images[name] for name in files]
