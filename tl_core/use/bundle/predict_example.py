"""Classify images with this bundle: python predict_example.py [--json] IMAGE [IMAGE ...]

Needs numpy and pillow, plus the runtime of the model file (see _load_predict). The preprocessing is the one the
model was trained with (preprocess.json): resize the shorter side, centre-crop, normalise.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
PRE = json.loads((HERE / "preprocess.json").read_text())
LABELS = json.loads((HERE / "labels.json").read_text())
CLASSES = LABELS["classes"]
TASKS = LABELS.get("tasks")  # a multi-task model: each task's head is a slice of the outputs


def prepare(path):
    """float32 1x3xSxS, as in training."""
    size = PRE["input_size"][-1]
    short = math.floor(size / PRE["crop_pct"])
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("RGBA", "LA", "PA", "P"):
        rgba = image.convert("RGBA")  # transparency on white
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    image = image.convert("RGB")
    w, h = image.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if new != image.size:
        image = image.resize(new, getattr(Image.Resampling, PRE["interpolation"].upper()))
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    x = np.asarray(image.crop((left, top, left + size, top + size)), np.float32).transpose(2, 0, 1)
    mean = np.array(PRE["mean"], np.float32)[:, None, None] * 255
    std = np.array(PRE["std"], np.float32)[:, None, None] * 255
    return ((x - mean) / std)[None]

def _load_predict():
    """predict(x) for whichever model file this bundle holds: ONNX, TorchScript or safetensors."""
    if (HERE / "model.onnx").exists():
        import onnxruntime  # pip install onnxruntime

        session = onnxruntime.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
    import torch  # pip install torch (and timm safetensors for a safetensors bundle)

    if (HERE / "model.torchscript.pt").exists():
        model = torch.jit.load(str(HERE / "model.torchscript.pt"), map_location="cpu").eval()
    else:
        import timm
        from safetensors.torch import load_model

        if PRE.get("features", "last") == "last":
            model = timm.create_model(PRE["backbone"], pretrained=False, num_classes=len(CLASSES))
        else:  # a head on every stage's pooled outputs: its forward is tl_core.models.multilayer's
            try:
                from tl_core.use.predict import model_for
            except ImportError:
                sys.exit("this model's head reads every stage (multi-layer features): load it with tl_core, "
                         "or use the ONNX or TorchScript bundle, which need no Python code of ours")
            model = model_for(PRE, len(CLASSES))
        load_model(model, str(HERE / "model.safetensors"))
        model.eval()

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return predict


predict = _load_predict()


def probabilities(path):
    """Class probabilities of one image, in the order of labels.json: a softmax over the classes, or for a
    multi-task model a softmax within each single-label task and a sigmoid per tag of a multi-label one."""
    logits = predict(prepare(path))[0].astype(np.float64)
    if not TASKS:
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()
    probs = np.empty_like(logits)
    for task in TASKS:
        part = slice(task["offset"], task["offset"] + len(task["classes"]))
        if task["kind"] == "multi-label":
            probs[part] = 1 / (1 + np.exp(-logits[part]))
        else:
            e = np.exp(logits[part] - logits[part].max())
            probs[part] = e / e.sum()
    return probs


def answer(probs):
    """In words: the top 3 classes, or for a multi-task model each task's answer (tags above their threshold)."""
    if not TASKS:
        return ", ".join(f"{CLASSES[i]} {probs[i]:.1%}" for i in probs.argsort()[::-1][:3])
    words = []
    for task in TASKS:
        part = probs[task["offset"]:task["offset"] + len(task["classes"])]
        if task["kind"] == "multi-label":
            tags = [f"{c} {p:.0%}" for c, p, t in zip(task["classes"], part, task["thresholds"]) if p >= t]
            words.append(f"{task['name']}: {', '.join(tags) or 'none'}")
        else:
            words.append(f"{task['name']}: {task['classes'][int(part.argmax())]} {part.max():.1%}")
    return "; ".join(words)


if __name__ == "__main__":
    as_json = "--json" in sys.argv[1:]  # one JSON line per image: {"image", "probs"}
    for path in (arg for arg in sys.argv[1:] if arg != "--json"):
        probs = probabilities(path)
        if as_json:
            print(json.dumps({"image": path, "probs": probs.tolist()}))
        else:
            print(path + ": " + answer(probs))
