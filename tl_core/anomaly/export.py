"""Exporting an anomaly run: one ONNX graph (extractor + memory bank + scorer) checked with onnxruntime, and a
standalone program (numpy, pillow, onnxruntime) that prints score and verdict and writes the heat map."""
from __future__ import annotations

import io
import os
import secrets
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from tl_core.anomaly.data import good_paths, labelled_samples
from tl_core.anomaly.features import load_pixels
from tl_core.anomaly.predict import load_model
from tl_core.use.export import MODEL_FILES, ONNX_OPSET
from tl_core.ops.runs import RunFolder, read_config
from tl_core.ops.storage import atomic_write_bytes, atomic_write_json

SCORE_TOLERANCE = 1e-3  # the bar: ONNX scores within 1e-3 of tl_core's
MAP_TOLERANCE = 1e-2  # the map passes through more operations (upsampling, smoothing): a looser bar, reported
PROGRAM = "predict_anomaly.py"
CHECK_IMAGES = 8


class ExportMismatch(RuntimeError):
    """The exported graph disagrees with tl_core's model beyond the tolerance; nothing was published."""


def export(run_dir: str | Path, fmt: str = "onnx", out_dir: str | Path | None = None) -> dict:
    """Write, verify and zip the ONNX bundle of a finished anomaly run (tl_core.kinds export hook)."""
    if fmt != "onnx":
        raise ValueError(f"format {fmt!r}: an anomaly run exports to onnx only")
    run_dir = Path(run_dir)
    model, geometry, chosen = load_model(run_dir)
    pixels, source = _check_pixels(run_dir, geometry["input_size"][-1])
    with torch.inference_mode():
        reference = [t.numpy() for t in model(pixels)]
    out_dir = Path(out_dir).resolve() if out_dir else (RunFolder(run_dir).export_root / fmt).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / MODEL_FILES["onnx"]
    staged = out_dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        t0 = time.time()
        exporter = _export_onnx(model, pixels[:1], staged)
        check = verify(staged, pixels, reference, chosen["value"])
        check.update(source=source, exporter=exporter, export_s=round(time.time() - t0, 2))
        if not check["verified"]:
            raise ExportMismatch(f"{final.name}: the ONNX graph differs from tl_core's model by up to "
                                 f"{check['max_score_diff']:.2e} in score (allowed {SCORE_TOLERANCE}) and "
                                 f"{check['max_map_diff']:.2e} in the map (allowed {MAP_TOLERANCE}); "
                                 "nothing was written")
        os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)
    atomic_write_json(out_dir / RunFolder(out_dir).preprocess.name, geometry)
    atomic_write_json(out_dir / RunFolder(out_dir).threshold.name, chosen)
    shutil.copyfile(Path(__file__).parent.parent / "use" / "bundle" / PROGRAM, out_dir / PROGRAM)
    zip_path = _zip(out_dir, f"{run_dir.name}-anomaly-onnx")
    return {"format": "onnx", "path": str(final), "zip": str(zip_path), "bundle": str(out_dir),
            "program": str(out_dir / PROGRAM), "size_bytes": final.stat().st_size, **check}


def _check_pixels(run_dir: Path, size: int) -> tuple[torch.Tensor, str]:
    """A few of the run's own images: good ones and, when there are, labelled defects (both verdicts tested)."""
    dataset_dir = read_config(run_dir).dataset_dir
    paths = [s.path for s in labelled_samples(dataset_dir) if s.anomalous][:CHECK_IMAGES // 2]
    paths += good_paths(dataset_dir)[:CHECK_IMAGES - len(paths)]
    return load_pixels(paths, size), f"{len(paths)} images of the run's dataset"


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """torch.export-based exporter first (the supported path); the TorchScript-based one if that fails."""
    import onnx

    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["pixels"], output_names=["score", "anomaly_map"],
                                    dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        program.save(str(path), external_data=False)
        exporter = "torch.onnx (dynamo)"
    except Exception as dynamo_error:  # an op torch.export cannot capture
        path.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["pixels"], output_names=["score", "anomaly_map"],
                              dynamic_axes={"pixels": {0: "batch"}, "score": {0: "batch"},
                                            "anomaly_map": {0: "batch"}})
        exporter = f"torch.onnx (TorchScript-based; dynamo failed: {str(dynamo_error).splitlines()[0][:160]})"
    onnx.checker.check_model(str(path))
    return exporter


def verify(model_path: str | Path, pixels: torch.Tensor, reference: list, threshold: float) -> dict:
    """onnxruntime against tl_core's model on the same pixels: score and map differences, verdict agreement."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    score_diff = float(np.abs(scores - reference[0]).max())
    map_diff = float(np.abs(maps - reference[1]).max())
    same_verdicts = int(((scores >= threshold) == (reference[0] >= threshold)).sum())
    return {"images_checked": len(pixels), "max_score_diff": score_diff, "max_map_diff": map_diff,
            "same_verdicts": same_verdicts, "tolerance": SCORE_TOLERANCE,
            "verified": score_diff <= SCORE_TOLERANCE and map_diff <= MAP_TOLERANCE}


def _zip(out_dir: Path, folder: str) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(p for p in out_dir.iterdir() if not p.name.startswith(".")):
            archive.write(path, f"{folder}/{path.name}")
    zip_path = out_dir.with_name(out_dir.name + ".zip")
    atomic_write_bytes(zip_path, buffer.getvalue())
    return zip_path
