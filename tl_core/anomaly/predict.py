"""Predicting with a finished anomaly run: a score, the verdict at the run's threshold, and a heat map."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tl_core.anomaly.features import image_to_pixels, rebuild_extractor
from tl_core.anomaly.model import AnomalyModel
from tl_core.anomaly.overlay import overlay
from tl_core.ops.runs import RunFolder
from tl_core.ops.storage import read_json


def load_model(run_dir: str | Path) -> tuple[AnomalyModel, dict, dict]:
    """The run's AnomalyModel (eval mode), its geometry (preprocess.json) and its threshold record."""
    from safetensors.torch import load_file

    folder = RunFolder(run_dir)
    geometry, chosen = read_json(folder.preprocess), read_json(folder.threshold)
    if not geometry or not chosen:
        raise ValueError(f"{run_dir}: not a finished anomaly run (no preprocess.json or threshold.json)")
    model = AnomalyModel(rebuild_extractor(geometry), torch.zeros(geometry["bank"]))
    model.load_state_dict(load_file(str(folder.weights)))
    return model.eval(), geometry, chosen


class AnomalyPredictor:
    """predict(image) → {"score", "anomalous", "threshold"} (+ "resized" when its size differs from training's)."""

    def __init__(self, run_dir: str | Path, threshold: float | None = None):
        self.model, self.geometry, self.threshold_record = load_model(run_dir)
        self.threshold = float(self.threshold_record["value"] if threshold is None else threshold)
        self.size = self.geometry["input_size"][-1]

    @torch.inference_mode()
    def score_images(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N) and heat maps (N×S×S, at the model's input size) of PIL images."""
        pixels = torch.cat([image_to_pixels(image, self.size) for image in images])
        scores, maps = self.model(pixels)
        return scores.numpy(), maps.numpy()

    def predict(self, image: Image.Image) -> dict:
        score = float(self.score_images([image])[0][0])
        return {"score": round(score, 6), "anomalous": score >= self.threshold, "threshold": round(self.threshold, 6),
                **self.size_note(image)}

    def explain(self, image: Image.Image) -> dict:
        """predict(image) with its heat map at the image's own size (float array) and an overlay (PIL image)."""
        scores, maps = self.score_images([image])
        heat = np.asarray(Image.fromarray(maps[0]).resize(image.size, Image.Resampling.BILINEAR))
        return {"score": float(scores[0]), "anomalous": bool(scores[0] >= self.threshold), "threshold": self.threshold,
                "map": heat, "overlay": overlay(image, heat, self.threshold), **self.size_note(image)}

    def size_note(self, image: Image.Image) -> dict:
        """Says so when the image's size differs from the good images': it is resized whole, which may distort."""
        trained = self.geometry.get("train_size") or []
        if trained and list(image.size) != list(trained):
            return {"resized": f"{image.width}×{image.height} resized to {self.size}×{self.size}; the good images "
                               f"were {trained[0]}×{trained[1]}, so shapes may be stretched differently"}
        return {}


def predictor(run_dir: str | Path) -> AnomalyPredictor:
    """The kind's predictor hook (tl_core.kinds)."""
    return AnomalyPredictor(run_dir)

