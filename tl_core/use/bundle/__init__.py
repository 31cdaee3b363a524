"""An exported bundle: the names of its files, which export writes and the model card names; and
predict_example.py, the standalone program shipped in every bundle (it imports nothing of tl_core)."""
from ...ops.runs import RunFolder

FORMATS = ("onnx", "torchscript", "safetensors")
_RUN_FILES = RunFolder(".")  # a bundle keeps the names the run folder gives its weights, labels and preprocessing
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": _RUN_FILES.weights.name}
BUNDLE_FILES = (_RUN_FILES.labels.name, _RUN_FILES.preprocess.name, "MODEL_CARD.md", "verification.json",
                "predict_example.py")
