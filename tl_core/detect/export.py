"""Export a detection run as an ONNX bundle with its post-processing inside, verified with ONNX Runtime.

model.onnx takes one picture (float32 1×3×S×S, RGB in 0..1, stretched to S×S) and returns boxes (x0, y0, x1,
y1 in input pixels), scores and class indices, decoded and non-maximum-suppressed inside the graph
(torchvision's FCOS post-processing traced by the TorchScript-based exporter; ONNX NonMaxSuppression).
Before the file is kept, ONNX Runtime runs it on the run's held-out pictures: every box tl_core finds at or
above the shown score must be found again (same class, IoU ≥ MIN_IOU, score within SCORE_TOLERANCE) and
ONNX Runtime must find none that tl_core does not; otherwise nothing is kept (ExportMismatch).
The bundle: model.onnx, labels.json, preprocess.json, verification.json, MODEL_CARD.md and
predict_example.py, a standalone program that draws the boxes (tl_core/use/bundle/detect_predict_example.py).
"""
from __future__ import annotations

import io
import os
import secrets
import time
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import box_iou

from tl_core.detect.predict import SCORE_THRESHOLD, DetectPredictor
from tl_core.ops.runs import RunFolder
from tl_core.ops.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

MODEL_FILE = "model.onnx"
PROGRAM = Path(__file__).resolve().parent.parent / "use" / "bundle" / "detect_predict_example.py"
ONNX_OPSET = 17
MIN_IOU = 0.99
SCORE_TOLERANCE = 1e-3
MAX_VERIFY_IMAGES = 64
SHARED_MODE = 0o644
_RUN_FILES = RunFolder(".")
BUNDLE_FILES = (MODEL_FILE, _RUN_FILES.labels.name, _RUN_FILES.preprocess.name, "verification.json", "MODEL_CARD.md",
                "predict_example.py")


class ExportMismatch(RuntimeError):
    """The exported model does not find the boxes tl_core finds; `report` holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class _OnePicture(nn.Module):
    """The detector on one 1×3×S×S picture, answering three tensors (ONNX has no list of dicts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        found = self.model([images[0]])[0]
        return found["boxes"], found["scores"], found["labels"]


def export_run(run_dir: str | Path, fmt: str = "onnx", out_dir: str | Path | None = None) -> dict:
    """The kind's export: write, verify and zip the ONNX bundle of a finished detection run; its report."""
    if fmt != "onnx":
        raise ValueError(f"format {fmt!r}: a detector exports to onnx only")
    run_dir = Path(run_dir)
    predictor = DetectPredictor(run_dir)
    pixels = _held_out_pixels(run_dir, predictor)
    out_dir = Path(out_dir).resolve() if out_dir else (RunFolder(run_dir).export_root / fmt).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = out_dir / f".{MODEL_FILE}.{secrets.token_hex(4)}.tmp"
    try:
        started = time.time()
        _export_onnx(predictor, staged)
        report = verify(staged, predictor, pixels)
        report["export_s"] = round(time.time() - started - report["verify_s"], 2)
        if not report["verified"]:
            raise ExportMismatch(f"{MODEL_FILE} does not reproduce tl_core's boxes: {report['problem']}; "
                                 "the export was not kept", report)
        os.replace(staged, out_dir / MODEL_FILE)
    finally:
        staged.unlink(missing_ok=True)
    _write_bundle(run_dir, predictor, out_dir, report)
    zip_path = out_dir.with_name(out_dir.name + ".zip")
    _write_zip(out_dir, zip_path, f"{run_dir.name}-{fmt}")
    return {"format": fmt, "path": str(out_dir / MODEL_FILE), "zip": str(zip_path), "bundle": str(out_dir),
            **report, "size_bytes": (out_dir / MODEL_FILE).stat().st_size}


def _export_onnx(predictor: DetectPredictor, path: Path) -> None:
    """The TorchScript-based exporter: it traces torchvision's detection post-processing and NMS, which
    torch.export cannot yet (the number of boxes depends on the data)."""
    example = torch.rand(1, 3, predictor.size, predictor.size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_OnePicture(predictor.model).eval(), (example,), str(path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["images"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={"boxes": {0: "found"}, "scores": {0: "found"}, "labels": {0: "found"}})


def verify(model_path: str | Path, predictor: DetectPredictor, pixels: torch.Tensor,
           threshold: float = SCORE_THRESHOLD) -> dict:
    """Compare ONNX Runtime's boxes with tl_core's on uint8 N×3×S×S `pixels` (see the module doc)."""
    import onnxruntime

    started = time.time()
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    worst_iou, worst_score, boxes, problem = 1.0, 0.0, 0, None
    for i in range(len(pixels)):
        reference = predictor.detect_pixels(pixels[i:i + 1])[0]
        out = session.run(None, {"images": (pixels[i:i + 1].float() / 255).numpy()})
        exported = {"boxes": torch.from_numpy(out[0]), "scores": torch.from_numpy(out[1]),
                    "labels": torch.from_numpy(out[2])}
        for a, b, direction in ((reference, exported, "tl_core"), (exported, reference, "ONNX Runtime")):
            # every box shown by one must be in the other; a box just under the line may fall either side of it
            shown = a["scores"] >= threshold + (SCORE_TOLERANCE if direction == "ONNX Runtime" else 0)
            for box, score, label in zip(a["boxes"][shown], a["scores"][shown], a["labels"][shown]):
                same = b["labels"] == label
                if not same.any():
                    problem = problem or f"picture {i}: a {direction} box has no counterpart"
                    worst_iou = 0.0
                    continue
                overlaps = box_iou(box[None], b["boxes"][same])[0]
                j = int(overlaps.argmax())
                worst_iou = min(worst_iou, float(overlaps[j]))
                worst_score = max(worst_score, abs(float(score) - float(b["scores"][same][j])))
                boxes += direction == "tl_core"
    verified = worst_iou >= MIN_IOU and worst_score <= SCORE_TOLERANCE
    if not verified and problem is None:
        problem = f"lowest box IoU {worst_iou:.4f} (needs {MIN_IOU}), largest score difference {worst_score:.2g} " \
                  f"(allowed {SCORE_TOLERANCE:g})"
    return {"format": "onnx", "images": len(pixels), "boxes_checked": int(boxes), "min_iou": round(worst_iou, 6),
            "max_score_diff": worst_score, "score_threshold": threshold, "min_iou_needed": MIN_IOU,
            "score_tolerance": SCORE_TOLERANCE, "verified": verified, "problem": problem,
            "verify_s": round(time.time() - started, 2)}


def _held_out_pixels(run_dir: Path, predictor: DetectPredictor) -> torch.Tensor:
    """The run's validation pictures (never trained on) at the input size."""
    from tl_core.data.datasets.images import open_image
    from tl_core.detect.batches import resize_picture

    record = read_json(RunFolder(run_dir).detections) or {}
    pictures = []
    for row in record.get("images", [])[:MAX_VERIFY_IMAGES]:
        try:
            pictures.append(resize_picture(open_image(row["path"]), predictor.size))
        except (OSError, ValueError):
            continue  # a dataset deleted since: the check uses what is left
    if not pictures:
        raise ValueError(f"{run_dir}: none of the run's held-out pictures can be read to verify the export")
    return torch.stack(pictures)


def _write_bundle(run_dir: Path, predictor: DetectPredictor, out_dir: Path, report: dict) -> None:
    atomic_write_json(out_dir / _RUN_FILES.labels.name, {"classes": predictor.classes})
    atomic_write_json(out_dir / _RUN_FILES.preprocess.name, predictor.preprocess)
    atomic_write_json(out_dir / "verification.json", {"model_file": MODEL_FILE, **report})
    atomic_write_text(out_dir / "MODEL_CARD.md", _card(run_dir, predictor, report))
    atomic_write_bytes(out_dir / "predict_example.py", PROGRAM.read_bytes())


def _card(run_dir: Path, predictor: DetectPredictor, report: dict) -> str:
    metrics = read_json(RunFolder(run_dir).metrics) or {}
    size = predictor.size
    per_class = "\n".join(f"| {name} | {row.get('ap50')} | {row.get('ap')} | {row.get('objects')} |"
                          for name, row in (metrics.get("per_class") or {}).items())
    return f"""# Object detector: {', '.join(predictor.classes)}

Backbone {predictor.preprocess['backbone']} with a feature pyramid and an FCOS head (torchvision), trained by
Transfer Learning Studio (run {run_dir.name}).

## Scores on {metrics.get('n_val', '?')} held-out pictures
mAP@50 {metrics.get('map50')}, mAP@[.5:.95] {metrics.get('map')} (torchmetrics, pycocotools).

| class | AP@50 | AP@[.5:.95] | objects |
|---|---|---|---|
{per_class}

## Input and output of model.onnx
- input `images`: float32 1×3×{size}×{size}, RGB in 0..1; stretch the picture to {size}×{size} (bilinear).
  Normalisation (mean {predictor.preprocess['mean']}, std {predictor.preprocess['std']}) is inside the model.
- outputs `boxes` N×4 (x0, y0, x1, y1 in input pixels), `scores` N, `labels` N (indices into labels.json).
- Post-processing is inside: box decoding, scores over {predictor.preprocess['score_thresh']}, non-maximum
  suppression per class at IoU {predictor.preprocess['nms_thresh']}, at most 100 boxes. Show boxes scoring
  {SCORE_THRESHOLD} or more; multiply x by width/{size} and y by height/{size} to draw them on the picture.

## Verified
ONNX Runtime against the PyTorch model on {report['images']} held-out pictures: {report['boxes_checked']} boxes,
lowest IoU {report['min_iou']}, largest score difference {report['max_score_diff']:.2g}.

`python predict_example.py picture.jpg` prints the boxes and writes picture.jpg.boxes.png with them drawn.
"""


def _write_zip(out_dir: Path, zip_path: Path, folder: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name in BUNDLE_FILES:
            entry = zipfile.ZipInfo.from_file(out_dir / name, f"{folder}/{name}")
            entry.external_attr = (0o100000 | SHARED_MODE) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, (out_dir / name).read_bytes(), compresslevel=1)
    atomic_write_bytes(zip_path, buffer.getvalue())
    for path in (zip_path, *(out_dir / name for name in BUNDLE_FILES)):
        os.chmod(path, SHARED_MODE)
