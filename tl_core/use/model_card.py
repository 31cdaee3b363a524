"""MODEL_CARD.md of an exported bundle: what the model is, what it was trained on, how well it did
(with an honest interval), which weights it holds, and what it is not for."""
from __future__ import annotations

import contextlib
import datetime
from pathlib import Path

from ..ops.runs import RunFolder, read_config_record
from ..ops.storage import read_json
from ..ops.words import plural
from . import run_facts
from .bundle import MODEL_FILES

def _kept_lines(kept: dict | None) -> list[str]:
    """Which weights the bundle holds: the run's plan names what could train, this what did."""
    if not kept:
        return []
    line = (f"- Weights kept: epoch {kept['epoch']} ({kept['phase']} phase), plan `{kept['plan']}`, "
            f"{kept['trainable_params']:,} parameters learnt.")
    return [line + (f" Note: {kept['reason']}." if kept.get("reason") else "")]


def model_card(run_dir: str | Path, fmt: str, report: dict | None = None) -> str:
    """MODEL_CARD.md: what the model is, what it was trained on, how well it did, and what it is not for."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    record = read_config_record(run_dir)  # with facts.json: the device the run really used
    config = record.get("config", {})
    metrics = read_json(folder.metrics, {}) or {}
    preprocess = read_json(folder.preprocess, {})
    classes = read_json(folder.labels, {}).get("classes", [])
    per_class = metrics.get("per_class", {})
    known = run_facts.facts(run_dir)
    counts = _train_counts(config)
    weights = config.get("weights", "?")
    weights = {"embedded": "ImageNet weights shipped with the app (offline)",
               "hub": "timm's pretrained weights (Hugging Face hub)",
               "none": "random initialisation (no pretraining)"}.get(weights, f"the file {Path(weights).name}")
    size = preprocess.get("input_size", ["?", "?", "?"])
    how_trained = {True: "fine-tuned", False: "trained (a new head on a frozen backbone)"}.get(
        known["fine_tuned"], "trained")
    if config.get("val_dataset_dir"):
        split = f"; validation set: {_quoted(run_facts.dataset_name(config.get('val_dataset_dir')))}"
    elif known["validation"] == "cv":
        split = f"; validated by {known['validation_words']} (no images held out)"
    else:
        split = f"; {known['validation_words']} for validation (stratified, seeded)"
    lines = [
        f"# Model card: {known['name']}",
        "",
        f"An image classifier for {len(classes)} classes, {how_trained} with Transfer Learning Studio "
        f"and exported as {fmt} ({MODEL_FILES.get(fmt, '')}).",
        "",
        "## Model",
        f"- Backbone: `{preprocess.get('backbone') or config.get('backbone')}` (timm), starting from {weights}.",
        f"- Training: freeze plan `{config.get('freeze', '?')}` (which layer groups could train), "
        f"BatchNorm `{config.get('bn_policy', '?')}`, augmentation `{config.get('augment', '?')}`, "
        f"{plural(metrics.get('epochs_run'), 'epoch')} (best at epoch {metrics.get('best_epoch', '?')}), "
        f"learning rate {config.get('lr', '?')}, seed {config.get('seed', '?')}.",
        f"- What learnt: {known['learnt_words']}"
        + (f"; {known['learnt_params']:,} parameters" if known["learnt_params"] is not None else "") + ".",
        *_kept_lines(metrics.get("kept")),
        f"- Training time: {known['wall_words']}" + (f" ({known['wall_parts_words']})" if known["wall_parts_words"]
                                                    else "") + ".",
        f"- Input: RGB {size[-2]}×{size[-1]} px; shorter side resized to {size[-1]}/crop_pct "
        f"({preprocess.get('interpolation', '?')}), centre-cropped, scaled to 0..1, then normalised with "
        f"mean {preprocess.get('mean')} and std {preprocess.get('std')} (see preprocess.json).",
        "- Output: one logit per class, in the order of labels.json; softmax gives probabilities.",
        "",
        "## Data",
        f"- Dataset: {_quoted(known['dataset'])}{split}.",
        f"- {known['images_words'][:1].upper()}{known['images_words'][1:]}.",
        "",
        "| class | images | validation F1 |",
        "|---|---:|---:|",
    ]
    for name in classes:
        f1 = per_class.get(name, {}).get("f1")
        lines.append(f"| {name} | {counts.get(name, '?')} | {'?' if f1 is None else f'{f1:.3f}'} |")
    lines += [
        "",
        "## Results (validation)",
        f"- Accuracy: {known['accuracy_words']}" + (
            f" on {known['n_val']:,} images; 95% interval {known['interval_words']}" if known["interval"] else ""),
        f"- Macro F1: {metrics.get('macro_f1', float('nan')):.3f}",
    ]
    if report:
        lines.append(f"- Export check: on {report['images']} images ({report.get('source', '?')}) the {fmt} file "
                     f"agrees with PyTorch on top-1 for {report['top1_agreement']:.0%}, largest probability "
                     f"difference {report['max_prob_diff']:.1e} (verification.json).")
    versions = {**record.get("versions", {}), **_export_versions(fmt)}
    lines += [
        "",
        "## Intended use and limits",
        f"- It sorts an image into exactly one of: {', '.join(classes)}. It has no \"none of these\": "
        "an image of anything else still gets one of these labels, often with high confidence.",
        "- The accuracy above was measured on images from the same source as the training images. "
        "Expect it to be lower on photos from other cameras, lighting, backgrounds or framing; "
        "check on your own images before relying on it.",
        "- With few validation images the accuracy is a rough estimate (see the interval above).",
        "- Not for decisions about people, health, safety or money without a person reviewing each result.",
        "",
        "## Provenance",
        f"- Run: `{run_dir.name}`; trained on {metrics.get('device') or record.get('device') or 'an unrecorded device'}; "
        f"exported {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    return "\n".join(lines)


def _train_counts(config: dict) -> dict:
    """Images per class in the training dataset (all of it, before the validation split)."""
    from ..data.datasets import load_dataset

    try:
        return load_dataset(config["dataset_dir"]).counts()
    except Exception:  # the dataset may have been deleted since; the card still gets written
        return {}


def _quoted(name) -> str:
    return f"\"{name}\"" if name else "(unknown: the dataset was deleted)"


def _export_versions(fmt: str) -> dict:
    import importlib.metadata as md

    names = {"onnx": ("torch", "onnx", "onnxscript", "onnxruntime"), "torchscript": ("torch",),
             "safetensors": ("torch", "timm", "safetensors")}[fmt]
    versions = {}
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return versions
