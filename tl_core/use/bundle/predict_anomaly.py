"""Spot anomalies with this bundle: python predict_anomaly.py [--json] [--maps DIR] IMAGE [IMAGE ...]

Needs numpy, pillow and onnxruntime. model.onnx is one graph (patch features, the memory bank of good
patches, the nearest-neighbour scorer): RGB pixels in, each image's score and its heat map out. An image
scoring at or above the threshold (threshold.json) is anomalous. The heat map of each image is written as a
PNG beside it (or into --maps DIR): the image with the hot regions in red and yellow.
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
PRE = json.loads((HERE / "preprocess.json").read_text())
THRESHOLD = json.loads((HERE / "threshold.json").read_text())["value"]


def prepare(image):
    """float32 1x3xSxS in 0..255: the whole image resized (never cropped), as in training."""
    size = PRE["input_size"][-1]
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32).transpose(2, 0, 1)[None].copy()


def load(path):
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("RGBA", "LA", "PA", "P"):
        rgba = image.convert("RGBA")  # transparency on white, as in training
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("RGB")


def overlay(image, heat, threshold, alpha=0.55):
    """Red-yellow where the map nears or passes the threshold, the image itself elsewhere."""
    low, high = 0.5 * threshold, max(1.5 * threshold, float(heat.max()))
    level = np.clip((heat - low) / max(high - low, 1e-9), 0, 1)[..., None]
    colour = np.concatenate([np.ones_like(level), level, np.zeros_like(level)], axis=-1) * 255
    base = np.asarray(image, np.float32)
    return Image.fromarray((base * (1 - alpha * level) + colour * alpha * level).clip(0, 255).astype(np.uint8))


def main(argv):
    import onnxruntime

    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    maps_dir = None
    if "--maps" in argv:
        at = argv.index("--maps")
        maps_dir = Path(argv[at + 1])
        maps_dir.mkdir(parents=True, exist_ok=True)
        del argv[at:at + 2]
    if not argv:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    session = onnxruntime.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    written = set()
    for path in argv:
        try:
            image = load(path)
        except Exception as error:  # one bad file never stops the others
            print(json.dumps({"image": path, "error": str(error)}) if as_json else f"{path}: error: {error}")
            continue
        score, heat = session.run(None, {session.get_inputs()[0].name: prepare(image)})
        score = float(score[0])
        heat = np.asarray(Image.fromarray(heat[0]).resize(image.size, Image.Resampling.BILINEAR))
        out = (maps_dir or Path(path).parent) / f"{Path(path).stem}_anomaly_map.png"
        n = 1
        while out in written:  # two images of the same name (from different folders) keep both maps
            out, n = out.with_name(f"{Path(path).stem}_anomaly_map_{n}.png"), n + 1
        written.add(out)
        overlay(image, heat, THRESHOLD).save(out)
        verdict = score >= THRESHOLD
        if as_json:
            print(json.dumps({"image": path, "score": round(score, 6), "anomalous": verdict,
                              "threshold": round(THRESHOLD, 6), "map": str(out)}))
        else:
            print(f"{path}: score {score:.3f} (threshold {THRESHOLD:.3f}): "
                  f"{'ANOMALOUS' if verdict else 'normal'}; heat map: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
