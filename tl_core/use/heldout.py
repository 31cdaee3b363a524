"""A finished classifier tested on a labelled set it never saw (a folder, a zip or uploaded files): accuracy with
its interval, the confusion matrix and the mistakes, kept in the run folder (tl_core.ops.runs.write_heldout).

The set goes through the same ingest as training data (every refusal said, archives bounded), into a temporary
workspace that is removed afterwards: a test set is not a dataset to train on, and must not fill a student's quota.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ..data.datasets import ImageRefused, ingest_files, ingest_folder, ingest_zip, load_dataset, open_image
from ..fit.metrics import accuracy_interval, classification_metrics
from ..ops import runs
from .predict import Predictor

# Tested in the app's own process, so a set must stay small enough to answer within a minute or so on a CPU;
# bigger sets go to the command line (python -m tl_core evaluate), which has no such bound.
MAX_IMAGES = 600
_BATCH = 32


def test_heldout(run_dir: str | Path, source, label: str = "held-out set", max_images: int = MAX_IMAGES,
                 progress=None) -> dict:
    """Test a finished classifier on `source`: a folder of class folders (a path), a zip of them (bytes), or
    uploaded files as (file name, bytes, class name) tuples. Saves and returns the result: accuracy, its 95 %
    interval, per-class figures, confusion, the mistakes, and every picture or class that could not be used."""
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir)
    if predictor.layout is not None:
        raise ValueError("a multi-task model is tested with a labels table: python -m tl_core evaluate RUN "
                         "--data FOLDER --labels TABLE")
    with tempfile.TemporaryDirectory(prefix="heldout-") as scratch:
        dataset = _ingest(source, label, Path(scratch))
        if len(dataset.items) > max_images:
            raise ValueError(f"{label}: {len(dataset.items)} pictures, more than the app tests at once "
                             f"({max_images}); test it from the command line: python -m tl_core evaluate "
                             f"{run_dir} --data FOLDER --save")
        result, mistakes = _score(predictor, dataset, label, progress)
        result["in_training"] = _seen_in_training(run_dir, dataset)
        runs.write_heldout(run_dir, result, mistakes)
    return result


def _ingest(source, label: str, workspace: Path):
    """The set, ingested with the same checks as training data, into the scratch workspace."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ingest_zip(bytes(source), name=label, workspace=workspace, min_classes=1)
    if isinstance(source, (str, Path)):
        return ingest_folder(source, name=label, workspace=workspace, min_classes=1)
    return ingest_files(list(source), name=label, workspace=workspace, min_classes=1)


def _score(predictor: Predictor, dataset, label: str, progress) -> tuple[dict, list[tuple[str, bytes]]]:
    """Predict every usable picture; the figures and the mistaken pictures' bytes."""
    skipped = [{"name": name, "reason": "a class the model was not trained on"}
               for name in dataset.classes if name not in predictor.classes]
    skipped += [{"name": item.get("name", "?"), "reason": item.get("reason", "refused")} for item in dataset.refused]
    items = [item for item in dataset.items if item["label"] in predictor.classes]
    pixels, kept = [], []
    for item in items:
        path = dataset.root / item["path"]
        try:
            pixels.append(predictor.prepare(open_image(path, name=_shown(item))))
            kept.append(item)
        except (ImageRefused, OSError) as error:
            skipped.append({"name": _shown(item), "reason": str(error)})
    if not kept:
        raise ValueError(f"{label}: no picture in a class the model knows ({', '.join(predictor.classes)})")
    probs = []
    for start in range(0, len(pixels), _BATCH):
        probs.append(predictor.predict_pixels(torch.stack(pixels[start:start + _BATCH])))
        if progress:
            progress(min(start + _BATCH, len(pixels)), len(pixels))
    probs = torch.cat(probs)
    truth = [predictor.classes.index(item["label"]) for item in kept]
    guessed = probs.argmax(1).tolist()
    metrics = classification_metrics(truth, guessed, predictor.classes)
    low, high = accuracy_interval(metrics["accuracy"], len(kept))
    mistakes, files = [], []
    for item, true, guess, row in zip(kept, truth, guessed, probs):
        if true != guess:
            file_name = f"{len(files):04d}{Path(item['path']).suffix.lower()}"
            files.append((file_name, (dataset.root / item["path"]).read_bytes()))
            mistakes.append({"name": _shown(item), "label": predictor.classes[true],
                             "predicted": predictor.classes[guess], "confidence": round(float(row[guess]), 4),
                             "file": file_name})
    mistakes.sort(key=lambda mistake: -mistake["confidence"])  # the surest mistakes first: the most telling
    return ({"source": label, "images": len(kept), "interval": [low, high], "mistakes": mistakes,
             "skipped": skipped, "tested": time.time(), **metrics}, files)


def _shown(item: dict) -> str:
    """A picture's name as the user gave it: class folder and file (the dataset's own folder left out)."""
    return item["path"].removeprefix("images/")


def _seen_in_training(run_dir: Path, dataset) -> int:
    """How many of the set's pictures are byte for byte in the run's training data (which inflates the test)."""
    try:
        trained = load_dataset(runs.read_config(run_dir).dataset_dir)
    except (ValueError, OSError):
        return 0
    known = {item.get("sha256") for item in trained.items} - {None}
    return sum(item.get("sha256") in known for item in dataset.items)


def mistake_picture(run_dir: str | Path, mistake: dict) -> Path:
    """The saved copy of a picture the last held-out test got wrong."""
    return runs.heldout_mistakes_folder(Path(run_dir)) / Path(mistake["file"]).name
