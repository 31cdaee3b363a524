"""Export a finished run as a self-contained bundle (ONNX, TorchScript or safetensors), verified against PyTorch.

A bundle folder holds the model file, labels.json, preprocess.json, MODEL_CARD.md, verification.json and a
tiny predict_example.py; a zip of it sits beside it for download. Before anything is kept, the exported file
is loaded back the way a user would load it and run on the run's validation images: its probabilities must
match the PyTorch model's, or export_run raises ExportMismatch and keeps nothing.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
import time
import warnings
import zipfile
from pathlib import Path

import torch

from .bundle import BUNDLE_FILES, FORMATS, MODEL_FILES
from .model_card import model_card
from ..ops.runs import RunFolder
from ..ops.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

SHARED_MODE = 0o644  # exported files are for taking away and sharing, unlike the workspace's own (0600)

PREDICT_EXAMPLE = Path(__file__).with_name("bundle") / "predict_example.py"
ONNX_OPSET = 18
PROB_TOLERANCE = 1e-3  # fp32 exports differ from PyTorch by ~1e-5; a real fault differs by far more
MAX_VERIFY_IMAGES = 256  # enough to catch a faulty export; bounds the time on big validation sets
_VERIFY_BATCH = 32


class ExportMismatch(RuntimeError):
    """The exported model does not reproduce the PyTorch model's predictions; `report` holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def export_run(run_dir: str | Path, fmt: str = "onnx", out_dir: str | Path | None = None,
               images=None) -> dict:
    """Write the bundle of `fmt` for the finished run in `run_dir`, verify it, zip it; return the report.

    `out_dir` defaults to RUN_DIR/export/FMT; the zip is written beside it as FMT.zip (OUT_DIR.zip).
    `images` (paths, or uint8 N×3×S×S pixels) replaces the validation images used for the check.
    Raises ExportMismatch, keeping no model file, when the export disagrees with PyTorch.
    """
    from .predict import Predictor

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir)
    pixels, source = _verification_pixels(predictor, images)
    reference = predictor.predict_pixels(pixels)  # before exporting: an exporter must not be able to move it
    out_dir = Path(out_dir).resolve() if out_dir else (run_dir / "export" / fmt).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / MODEL_FILES[fmt]
    # Written under a temporary name first: a file that fails verification is never published.
    staged = out_dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        t0 = time.time()
        exporter = _EXPORTERS[fmt](predictor, staged)
        export_s = round(time.time() - t0, 2)
        check = verify_export(staged, predictor, pixels, fmt=fmt, reference=reference)
        check.update(source=source, exporter=exporter, export_s=export_s)
        if not check["verified"]:
            raise ExportMismatch(_mismatch_message(final.name, check), check)
        os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)
    zip_path = out_dir.with_name(out_dir.name + ".zip")
    _write_bundle(run_dir, predictor, out_dir, fmt, check)
    _write_zip(out_dir, zip_path, f"{run_dir.name}-{fmt}", fmt)
    return {"format": fmt, "path": str(final), "zip": str(zip_path), "bundle": str(out_dir), **check,
            "size_bytes": final.stat().st_size}


def verify_export(model_path: str | Path, predictor, pixels: torch.Tensor, fmt: str | None = None,
                  tolerance: float = PROB_TOLERANCE, reference: torch.Tensor | None = None) -> dict:
    """Compare an exported model with `predictor`'s PyTorch model on uint8 N×3×S×S `pixels`.

    A near-tie (the two classes within `tolerance` of each other in PyTorch) counts as agreeing on top-1:
    to the precision checked, either answer is the model's. `reference`: the PyTorch probabilities, if known.
    """
    model_path = Path(model_path)
    fmt = fmt or _format_of(model_path)
    if not len(pixels):
        raise ValueError("no images to verify the export with")
    t0 = time.time()
    reference = (predictor.predict_pixels(pixels) if reference is None else reference).double()
    run = _RUNNERS[fmt](model_path, predictor)
    exported = torch.cat([predictor.probabilities(run(predictor.normalize(pixels[i:i + _VERIFY_BATCH]).cpu())).double()
                          for i in range(0, len(pixels), _VERIFY_BATCH)])
    chosen = exported.argmax(1)
    best = reference.max(1).values
    agree = reference.gather(1, chosen[:, None])[:, 0] >= best - tolerance
    max_diff = float((exported - reference).abs().max())
    agreement = float(agree.double().mean())
    return {
        "format": fmt, "images": len(pixels), "top1_agreement": agreement,
        "top1_exact": int((chosen == reference.argmax(1)).sum()), "max_prob_diff": max_diff,
        "tolerance": tolerance, "verified": agreement == 1.0 and max_diff <= tolerance,
        "verify_s": round(time.time() - t0, 2),
    }


# ---------------------------------------------------------------- exporters: model → file

def _export_onnx(predictor, path: Path) -> str:
    """torch.export-based exporter (dynamo=True, the supported path); the TorchScript-based one if that fails."""
    import onnx

    model, example = predictor.model, _example_input(predictor)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        program.save(str(path), external_data=False)
        exporter = "torch.onnx (dynamo)"
    except Exception as dynamo_error:  # onnxscript missing, or an op torch.export cannot capture
        path.unlink(missing_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as legacy_error:
            raise RuntimeError(f"ONNX export failed: torch.export-based exporter: {_first_line(dynamo_error)}; "
                               f"TorchScript-based exporter: {_first_line(legacy_error)}") from legacy_error
        exporter = f"torch.onnx (TorchScript-based; the dynamo exporter failed: {_first_line(dynamo_error)})"
    onnx.checker.check_model(str(path))
    return exporter


def _first_line(error: Exception, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{type(error).__name__}: {text[:limit]}"


def _export_torchscript(predictor, path: Path) -> str:
    """Traced, not scripted: tracing works for any timm model; the verification shows it generalises."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic, torch.jit's deprecation notice
        traced = torch.jit.trace(predictor.model, _example_input(predictor), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return "torch.jit.trace"


def _export_safetensors(predictor, path: Path) -> str:
    from safetensors.torch import save_model

    save_model(predictor.model, str(path))
    return "safetensors.torch.save_model"


def _example_input(predictor) -> torch.Tensor:
    # Batch 2, not 1: an exporter may specialise a dimension of size 1 into a constant.
    size = predictor.size
    return torch.zeros(2, 3, size, size)


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "safetensors": _export_safetensors}


# ---------------------------------------------------------------- runners: file → logits, as a user loads it

def _run_onnx(path: Path, predictor):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _run_torchscript(path: Path, predictor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        model = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x):
        with torch.no_grad():
            return model(x)
    return run


def _run_safetensors(path: Path, predictor):
    from safetensors.torch import load_model

    from .predict import model_for

    model = model_for(predictor.preprocess, len(predictor.classes))
    load_model(model, str(path))
    model.eval()

    def run(x):
        with torch.no_grad():
            return model(x)
    return run


_RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript, "safetensors": _run_safetensors}


def _format_of(path: Path) -> str:
    for fmt in ("torchscript", "onnx", "safetensors"):  # ".torchscript.pt" before a bare ".pt" could match
        if path.name.endswith(MODEL_FILES[fmt].removeprefix("model")):
            return fmt
    raise ValueError(f"{path.name}: cannot tell the format from the name; pass fmt= ({', '.join(FORMATS)})")


# ---------------------------------------------------------------- verification images

def _verification_pixels(predictor, images) -> tuple[torch.Tensor, str]:
    """(uint8 N×3×S×S, where they came from): `images`, else the run's validation images, else seeded noise."""
    size = predictor.size
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images: expected uint8 N×3×{size}×{size} pixels, got {images.dtype} "
                             f"{tuple(images.shape)}")
        return images[:MAX_VERIFY_IMAGES], "given"
    if images is not None:
        pixels = _decode(predictor, [Path(p) for p in images][:MAX_VERIFY_IMAGES])
        if not len(pixels):
            raise ValueError("images: none of the given files is a readable image")
        return pixels, "given"
    paths = [p for p in _validation_paths(predictor.run_dir) if p.is_file()][:MAX_VERIFY_IMAGES]
    if paths:
        pixels = _decode(predictor, paths)
        if len(pixels):
            return pixels, "validation"
    # The validation images are gone (dataset deleted or moved): noise still exercises every weight.
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=generator), "synthetic"


def _validation_paths(run_dir: Path) -> list[Path]:
    try:
        with open(RunFolder(run_dir).predictions, newline="") as f:
            return [Path(row["path"]) for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def _decode(predictor, paths: list[Path]) -> torch.Tensor:
    from ..data.datasets import ImageRefused, decode_images, open_image

    pre = predictor.preprocess
    try:
        return decode_images(paths, predictor.size, pre["crop_pct"], pre["interpolation"])
    except (ImageRefused, OSError):  # one bad file: decode the rest one by one, skipping it
        good = []
        for path in paths:
            with contextlib.suppress(ImageRefused, OSError):
                good.append(predictor.prepare(open_image(path, name=str(path))))
        size = predictor.size
        return torch.stack(good) if good else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def _mismatch_message(name: str, report: dict) -> str:
    n = report["images"]
    wrong = round((1 - report["top1_agreement"]) * n)
    return (f"{name} does not reproduce the PyTorch model: top-1 differs on {wrong} of {n} images "
            f"(agreement {report['top1_agreement']:.1%}), largest probability difference "
            f"{report['max_prob_diff']:.2g} (allowed {report['tolerance']:g}); the export was not kept")


# ---------------------------------------------------------------- the bundle

def _write_bundle(run_dir: Path, predictor, out_dir: Path, fmt: str, report: dict) -> None:
    atomic_write_json(out_dir / RunFolder(".").labels.name, predictor.labels_record)  # a multi-task model's heads too
    atomic_write_json(out_dir / RunFolder(".").preprocess.name, predictor.preprocess)
    atomic_write_json(out_dir / "verification.json", {"model_file": MODEL_FILES[fmt], **report})
    atomic_write_text(out_dir / "MODEL_CARD.md", model_card(run_dir, fmt, report))
    # A real program of the package, tested there; it finds the bundle's model file itself.
    atomic_write_bytes(out_dir / "predict_example.py", PREDICT_EXAMPLE.read_bytes())


def _write_zip(out_dir: Path, zip_path: Path, folder: str, fmt: str) -> None:
    """The bundle as a zip a user takes away: the zip and every file in it readable as ordinary files are
    (0644). Atomic writes make private temporary files (0600), which the zip used to carry along."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name in (MODEL_FILES[fmt], *BUNDLE_FILES):
            entry = zipfile.ZipInfo.from_file(out_dir / name, f"{folder}/{name}")
            entry.external_attr = (0o100000 | SHARED_MODE) << 16  # a regular file, rw-r--r--
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, (out_dir / name).read_bytes(), compresslevel=1)
    atomic_write_bytes(zip_path, buffer.getvalue())
    for path in (zip_path, *(out_dir / name for name in (MODEL_FILES[fmt], *BUNDLE_FILES))):
        os.chmod(path, SHARED_MODE)
