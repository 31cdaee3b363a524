"""Find objects with this bundle: python predict_example.py [--json] [--threshold 0.3] IMAGE [IMAGE ...]

Needs numpy, pillow and onnxruntime. For each picture it prints the boxes (label, score, x0 y0 x1 y1 in the
picture's pixels) and writes IMAGE.boxes.png beside it with the boxes drawn.

What model.onnx expects and returns (see preprocess.json):
  input  "images": float32 1x3xSxS, RGB scaled to 0..1, the picture stretched to SxS (bilinear); the
         normalisation by mean and std is inside the model.
  output "boxes" Nx4 (x0, y0, x1, y1 in the SxS input's pixels), "scores" N, "labels" N (index into
         labels.json's classes): already decoded, with non-maximum suppression per class done inside the model
         (IoU preprocess.json's nms_thresh); boxes scoring under score_thresh are already left out.
  To map a box back to the picture, multiply x by width/S and y by height/S.
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

HERE = Path(__file__).resolve().parent
PRE = json.loads((HERE / "preprocess.json").read_text())
CLASSES = json.loads((HERE / "labels.json").read_text())["classes"]
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990"]


def prepare(picture):
    """float32 1x3xSxS in 0..1, as in training."""
    size = PRE["image_size"]
    square = picture.resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(square, np.float32) / 255).transpose(2, 0, 1)[None]


def detect(session, picture, threshold):
    """[{"label", "score", "box"}] in the picture's pixels, best first."""
    size = PRE["image_size"]
    boxes, scores, labels = session.run(None, {"images": prepare(picture)})
    sx, sy = picture.width / size, picture.height / size
    found = [{"label": CLASSES[int(k)], "score": round(float(s), 4),
              "box": [round(float(b[0]) * sx, 1), round(float(b[1]) * sy, 1),
                      round(float(b[2]) * sx, 1), round(float(b[3]) * sy, 1)]}
             for b, s, k in zip(boxes, scores, labels) if s >= threshold]
    return sorted(found, key=lambda item: -item["score"])


def draw(picture, found):
    canvas = picture.copy()
    pen = ImageDraw.Draw(canvas)
    for item in found:
        colour = COLOURS[CLASSES.index(item["label"]) % len(COLOURS)]
        pen.rectangle(item["box"], outline=colour, width=max(1, round(max(canvas.size) / 200)))
        pen.text((item["box"][0] + 2, item["box"][1] + 1), f"{item['label']} {item['score']:.2f}", fill=colour)
    return canvas


def main(argv):
    import onnxruntime  # pip install onnxruntime

    as_json = "--json" in argv
    threshold = 0.3
    if "--threshold" in argv:
        threshold = float(argv[argv.index("--threshold") + 1])
    paths = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--threshold")]
    if not paths:
        print(__doc__.splitlines()[0])
        return 2
    session = onnxruntime.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in paths:
        try:
            picture = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        except Exception as error:  # one bad picture never stops the others
            print(json.dumps({"image": path, "error": str(error)}) if as_json else f"{path}: {error}")
            continue
        found = detect(session, picture, threshold)
        draw(picture, found).save(f"{path}.boxes.png")
        if as_json:
            print(json.dumps({"image": path, "boxes": found}))
        else:
            print(f"{path}: " + ("; ".join(f"{b['label']} {b['score']:.2f} at {b['box']}" for b in found)
                                 or "nothing found"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
