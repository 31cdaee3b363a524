"""Saliency: Grad-CAM heat maps of where a prediction looked, for convnets and vision transformers.

The maps come from the maintained `grad-cam` package (pytorch_grad_cam.GradCAM); this module picks the
target layer per architecture, turns a ViT's tokens into a grid, and maps the heat back onto the user's
image through the same resize and centre crop the model saw.
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as np
import torch
from PIL import Image

# The CAM hooks live on the model itself: two sessions explaining with one shared model must take turns.
_LOCK = threading.Lock()
_TARGETS: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


def target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The layer Grad-CAM looks at: the last spatial feature map before the global pool.

    Transformers with a token sequence (timm ViT, DeiT, EVA, ...) use the last block's norm1, as the
    grad-cam authors advise; other models are probed once with a forward pass, and the last module of
    `forward_features` that outputs a feature map (N×C×h×w or N×h×w×C) is taken; for a Sequential
    container, its last child (ResNet: layer4[-1]; ConvNeXt: stages[-1]).
    """
    if model in _TARGETS:
        return _TARGETS[model]
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "num_prefix_tokens") and isinstance(blocks, torch.nn.Sequential) and len(blocks) \
            and hasattr(blocks[-1], "norm1"):
        layer = blocks[-1].norm1
    else:
        layer = _last_feature_map_module(model)
    _TARGETS[model] = layer
    return layer


def gradcam(model: torch.nn.Module, x_normalized: torch.Tensor, class_index: int | None = None,
            layer: torch.nn.Module | None = None) -> np.ndarray:
    """Grad-CAM of one normalised image 1×3×H×W for `class_index` (default: the predicted class).

    Returns float32 H×W in [0, 1]. Works when every parameter is frozen: the graph is started at the
    target layer's output, so only the activations there need gradients, and nothing below is backpropagated.
    """
    return _gradcam(model, x_normalized, class_index, layer)[0]


def heatmap_overlay(image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heat map (jet colours: red = most important) blended over the image; same size as the image."""
    import cv2

    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    height, width = rgb.shape[:2]
    cam = np.asarray(cam, np.float32)
    if cam.shape != (height, width):
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)[:, :, ::-1]
    blended = (1 - alpha) * rgb[:, :, :3].astype(np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def explain_image(predictor, pil_image: Image.Image, class_index: int | None = None,
                  alpha: float = 0.45) -> dict:
    """Grad-CAM of a Predictor's model on one image, at the image's own size.

    {"cam": H×W float32 in [0, 1], "overlay": PIL image, "class": label, "class_index": k, "prob": p}.
    Outside the centre crop the model saw, the map is 0: the model never looked there.
    """
    if class_index is not None and not 0 <= class_index < len(predictor.classes):
        raise ValueError(f"class_index {class_index} is outside 0..{len(predictor.classes) - 1} "
                         f"({len(predictor.classes)} classes)")
    image = pil_image.convert("RGB")
    pixels = predictor.prepare(image)
    x = predictor.normalize(pixels[None])
    cam, logits = _gradcam(predictor.model, x, class_index, None)
    probs = logits.float().softmax(1)[0]
    k = int(probs.argmax()) if class_index is None else int(class_index)
    full = _uncrop(cam, image.size, predictor.size, predictor.preprocess["crop_pct"])
    return {"cam": full, "overlay": heatmap_overlay(image, full, alpha), "class": predictor.classes[k],
            "class_index": k, "prob": float(probs[k])}


# ---------------------------------------------------------------- internals

def _gradcam(model, x, class_index, layer) -> tuple[np.ndarray, torch.Tensor]:
    """(cam H×W, logits 1×K) from one forward and one backward."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam takes one image, 1×3×H×W; got {tuple(x.shape)}")
    with _LOCK:
        layer = layer or target_layer(model)
        was_training = model.training
        had_grad = {id(p) for p in model.parameters() if p.grad is not None}
        # Registered before GradCAM's own hooks, so theirs see the new graph's start.
        start = layer.register_forward_hook(_start_graph_here)
        cam = GradCAM(model=model, target_layers=[layer], reshape_transform=_reshape_for(model, x))
        try:
            targets = None if class_index is None else [ClassifierOutputTarget(int(class_index))]
            with torch.enable_grad():
                heat = cam(input_tensor=x.detach().clone(), targets=targets)
            logits = cam.outputs.detach()
        finally:
            cam.activations_and_grads.release()
            start.remove()
            model.train(was_training)
            for p in model.parameters():  # leave no gradients behind on a model that is only predicting
                if id(p) not in had_grad:
                    p.grad = None
    heat = np.nan_to_num(heat[0].astype(np.float32), nan=0.0)
    return np.clip(heat, 0.0, 1.0), logits


def _start_graph_here(module, inputs, output):
    """Make the target's output a fresh leaf that needs grad: frozen weights and inputs no longer matter,
    and the backward pass stops here instead of running down through the backbone."""
    if isinstance(output, torch.Tensor):
        return output.detach().requires_grad_(True).clone()  # clone: a later in-place op must not hit a leaf
    return None


def _reshape_for(model, x):
    """Turn the target's output into N×C×h×w: ViT tokens into their grid, channels-last maps to channels-first."""
    num_features = getattr(model, "num_features", None)
    prefix = getattr(model, "num_prefix_tokens", 0)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 3:
            tokens = t[:, prefix:, :]
            h, w = _token_grid(model, x, tokens.shape[1])
            return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
        if t.ndim == 4 and num_features and t.shape[1] != num_features and t.shape[3] == num_features:
            return t.permute(0, 3, 1, 2)
        return t

    return reshape


def _token_grid(model, x, n_tokens: int) -> tuple[int, int]:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch:
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
        if h * w == n_tokens:
            return h, w
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} patch tokens do not make a square grid; pass layer= to gradcam")
    return side, side


def _last_feature_map_module(model: torch.nn.Module) -> torch.nn.Module:
    """Probe forward_features once; the last module (not the model, not an Identity) whose output is a feature map."""
    seen: list[tuple[torch.nn.Module, torch.Tensor]] = []
    num_features = getattr(model, "num_features", None)

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and not isinstance(module, torch.nn.Identity):
            channels_last = bool(num_features) and output.shape[1] != num_features and output.shape[3] == num_features
            spatial = output.shape[1:3] if channels_last else output.shape[2:]
            if min(spatial) > 1:  # a 1×1 map is already pooled
                seen.append((module, output))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            forward = getattr(model, "forward_features", model)
            forward(torch.zeros(1, 3, *_probe_size(model), device=_device_of(model)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not seen:
        raise ValueError(f"{type(model).__name__}: no layer outputs a feature map; pass layer= to gradcam")
    module, output = seen[-1]
    # A Sequential hands on its last child's output: name that child (layer4[-1] rather than layer4).
    outputs = {id(m): o for m, o in seen}
    while isinstance(module, torch.nn.Sequential) and len(module) and outputs.get(id(module[-1])) is output:
        module = module[-1]
    return module


def _probe_size(model) -> tuple[int, int]:
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    return int(size[-2]), int(size[-1])


def _device_of(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _uncrop(cam: np.ndarray, image_size: tuple[int, int], size: int, crop_pct: float) -> np.ndarray:
    """Place a cam of the model's S×S centre crop back onto the original W×H image (0 outside the crop).

    Inverts datasets.prepare_image: shorter side resized to floor(S / crop_pct), then a centre S×S crop.
    """
    import cv2

    width, height = image_size
    short = math.floor(size / crop_pct)
    if width <= height:
        resized = (short, int(short * height / width))
    else:
        resized = (int(short * width / height), short)
    sx, sy = width / resized[0], height / resized[1]  # original pixels per resized pixel
    left = -((size - resized[0]) // 2) if size > resized[0] else int(round((resized[0] - size) / 2.0))
    top = -((size - resized[1]) // 2) if size > resized[1] else int(round((resized[1] - size) / 2.0))
    # The crop box in original coordinates, possibly reaching outside the image (the padded border).
    x0, y0 = left * sx, top * sy
    box_w, box_h = size * sx, size * sy
    scaled = cv2.resize(cam.astype(np.float32), (max(1, round(box_w)), max(1, round(box_h))),
                        interpolation=cv2.INTER_LINEAR)
    full = np.zeros((height, width), np.float32)
    ox, oy = round(x0), round(y0)
    src_x0, src_y0 = max(0, -ox), max(0, -oy)
    dst_x0, dst_y0 = max(0, ox), max(0, oy)
    w = min(scaled.shape[1] - src_x0, width - dst_x0)
    h = min(scaled.shape[0] - src_y0, height - dst_y0)
    if w > 0 and h > 0:
        full[dst_y0:dst_y0 + h, dst_x0:dst_x0 + w] = scaled[src_y0:src_y0 + h, src_x0:src_x0 + w]
    return full
