"""A finished run as a classifier: load its weights, labels and preprocessing; predict; evaluate a folder."""
from __future__ import annotations

from pathlib import Path

import torch

from . import backbones, multilayer
from .augment import normalize
from .datasets import ImageRefused, open_image, prepare_image
from .evaluate import classification_metrics
from .runs import RunFolder
from .storage import read_json

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def model_for(preprocess: dict, num_classes: int) -> torch.nn.Module:
    """An untrained model of a run's shape (its preprocess.json): the backbone and the head's features."""
    body = backbones.create_model(preprocess["backbone"], num_classes, weights="none")
    return multilayer.build(body, num_classes, preprocess.get("features", "last"))


class Predictor:
    """Everything needed to predict, read back from a run folder (model.safetensors, labels.json, preprocess.json)."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        from safetensors.torch import load_model

        self.run_dir = Path(run_dir)
        weights = RunFolder(self.run_dir).weights
        if not weights.exists():
            raise FileNotFoundError(f"{self.run_dir}: no model.safetensors; the run has not finished")
        self.preprocess = read_json(RunFolder(self.run_dir).preprocess)
        self.classes = read_json(RunFolder(self.run_dir).labels)["classes"]
        self.device = torch.device(device)
        self.model = model_for(self.preprocess, len(self.classes))
        load_model(self.model, str(weights), device=str(self.device))
        self.model.to(self.device).eval()
        self.size = self.preprocess["input_size"][-1]

    def prepare(self, image) -> torch.Tensor:
        """A PIL image → uint8 3×S×S, with the same geometry as training's decoded images."""
        return prepare_image(image, self.size, self.preprocess["crop_pct"], self.preprocess["interpolation"])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize(pixels.to(self.device), self.preprocess["mean"], self.preprocess["std"])

    @torch.inference_mode()
    def predict_pixels(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities, N×K, of uint8 N×3×S×S images."""
        out = [self.model(self.normalize(pixels[i:i + batch_size])).float().softmax(1).cpu()
               for i in range(0, len(pixels), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def predict_images(self, images: list) -> torch.Tensor:
        return self.predict_pixels(torch.stack([self.prepare(im) for im in images]))

    def top(self, probs: torch.Tensor, top_k: int = 3) -> list[dict]:
        values, indices = probs.topk(min(top_k, len(self.classes)))
        return [{"label": self.classes[i], "prob": round(float(v), 6)} for v, i in zip(values, indices)]

    def predict_files(self, files: list, top_k: int = 3) -> list[dict]:
        """{"top": [{"label", "prob"}, ...]} per file, or {"error": reason} for a file that is not a usable image."""
        results, images, where = [], [], []
        for f in files:
            try:
                images.append(open_image(f, name=str(f) if isinstance(f, (str, Path)) else "uploaded image"))
                where.append(len(results))
                results.append(None)
            except (ImageRefused, OSError) as error:
                results.append({"error": str(error)})
        if images:
            for slot, probs in zip(where, self.predict_images(images)):
                results[slot] = {"top": self.top(probs, top_k)}
        return results


def evaluate_folder(run_dir: str | Path, folder: str | Path) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on a folder of class folders.

    Files that are not images, and classes the model does not know, are listed under "skipped".
    """
    predictor = Predictor(run_dir)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    images, labels, skipped = [], [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in predictor.classes:
            skipped.append({"name": class_dir.name, "reason": "a class the model was not trained on"})
            continue
        for path in sorted(class_dir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                images.append(predictor.prepare(open_image(path, name=str(path))))
                labels.append(predictor.classes.index(class_dir.name))
            except (ImageRefused, OSError) as error:
                skipped.append({"name": str(path), "reason": str(error)})
    if not images:
        raise ValueError(f"{folder}: no images in class folders named like the model's classes "
                         f"({', '.join(predictor.classes)})")
    predicted = predictor.predict_pixels(torch.stack(images)).argmax(1).tolist()
    metrics = classification_metrics(labels, predicted, predictor.classes)
    return {"run": str(predictor.run_dir), "data": str(folder), "images": len(labels), **metrics,
            "skipped": skipped}
