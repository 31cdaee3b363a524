"""A finished run as a classifier: load its weights, labels and preprocessing; predict; evaluate a folder."""
from __future__ import annotations

from pathlib import Path

import torch

from ..models import backbones, multilayer
from ..data.augment import normalize
from ..data.datasets import ImageRefused, open_image, prepare_image
from ..fit.metrics import classification_metrics
from ..multitask import TaskLayout
from ..ops.runs import RunFolder
from ..ops.storage import read_json

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
        self.labels_record = read_json(RunFolder(self.run_dir).labels)
        self.classes = self.labels_record["classes"]
        # A multi-task run (a labels table): its heads side by side in the outputs (tl_core.multitask)
        self.layout = TaskLayout(self.labels_record["tasks"]) if self.labels_record.get("tasks") else None
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
        out = [self.probabilities(self.model(self.normalize(pixels[i:i + batch_size]))).cpu()
               for i in range(0, len(pixels), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes; for a multi-task model, within each task's head (a sigmoid per tag)."""
        return self.layout.probabilities(logits) if self.layout else logits.float().softmax(1)

    def task_answers(self, probs: torch.Tensor, top_k: int = 3) -> dict:
        """A multi-task model's answer per task: {"top": [...]} for a single-label task, {"tags": [...] above
        each tag's threshold, "top": every tag by probability} for a multi-label one."""
        answers = {}
        for task in self.labels_record["tasks"]:
            head = next(h for h in self.layout if h.name == task["name"])
            part = probs[head.outputs]
            ranked = [{"label": head.classes[int(i)], "prob": round(float(part[i]), 6)}
                      for i in part.argsort(descending=True)]
            if head.multi_label:
                cuts = task.get("thresholds", [0.5] * len(head.classes))
                answers[head.name] = {"kind": head.kind, "tags": [r for r in ranked
                                                                  if r["prob"] >= cuts[head.classes.index(r["label"])]],
                                      "top": ranked}
            else:
                answers[head.name] = {"kind": head.kind, "top": ranked[:top_k]}
        return answers

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
                if self.layout:  # "top" is then the first task's answer, for callers that read one
                    tasks = self.task_answers(probs, top_k)
                    results[slot] = {"tasks": tasks, "top": next(iter(tasks.values()))["top"][:top_k]}
                else:
                    results[slot] = {"top": self.top(probs, top_k)}
        return results


def evaluate_run(run_dir: str | Path, data_dir: str | Path, labels: str | Path | None = None) -> dict:
    """A classifier's metrics on labelled images it never saw: class folders, or images named by a labels
    table (`labels`) for a multi-task run (the evaluate hook of tl_core.kinds' classify and multitask)."""
    return evaluate_table(run_dir, data_dir, labels) if labels else evaluate_folder(run_dir, data_dir)


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


def evaluate_table(run_dir: str | Path, folder: str | Path, table: str | Path) -> dict:
    """A multi-task run's metrics per task on images named by a labels table: {"tasks": {name: metrics}}, the mean
    of the tasks' scores as "score", and what was skipped (rows the table could not use, labels the model lacks)."""
    from ..data.datasets.labels_table import parse_labels, read_table
    from ..multitask import task_metrics

    predictor = Predictor(run_dir)
    if predictor.layout is None:
        raise ValueError(f"{run_dir}: not a multi-task run; evaluate it on class folders without --labels")
    folder = Path(folder)
    header, rows = read_table(table if Path(table).exists() else folder / table, Path(table).name)
    _, labelled, skipped, _ = parse_labels(header, rows, None, Path(table).name)
    images, items = [], []
    for file, row in labelled.items():
        path = folder / file
        try:
            images.append(predictor.prepare(open_image(path, name=str(path))))
        except (ImageRefused, OSError) as error:
            skipped.append({"name": str(path), "reason": str(error)})
            continue
        for head in predictor.layout:
            value = row["labels"].get(head.name)
            unknown = [v for v in (value if isinstance(value, list) else [value]) if v is not None and v not in head.classes]
            if unknown:
                skipped.append({"name": f"{file} ({head.name})",
                                "reason": f"{', '.join(unknown)}: not a class the model was trained on"})
        items.append({"tasks": row["labels"]})
    if not images:
        raise ValueError(f"{folder}: none of the images the table names could be read")
    probs = predictor.predict_pixels(torch.stack(images))
    targets = predictor.layout.targets(items)
    thresholds = {t["name"]: t["thresholds"] for t in predictor.labels_record["tasks"] if "thresholds" in t}
    tasks = task_metrics(probs, targets, predictor.layout, thresholds)
    scores = [t["score"] for t in tasks.values() if t["score"] is not None]
    return {"run": str(predictor.run_dir), "data": str(folder), "images": len(images),
            "score": sum(scores) / len(scores) if scores else None, "tasks": tasks, "skipped": skipped}
