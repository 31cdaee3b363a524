"""Grad-CAM heat maps: a real run's EfficientNet, a tiny ViT, frozen weights, and the map's geometry."""
import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tl_core.data.datasets import open_image, prepare_image
from tl_core.use.explain import _uncrop, explain_image, gradcam, heatmap_overlay, target_layer
from tl_core.use.predict import Predictor


@pytest.fixture(scope="module")
def predictor(head_run):
    """The session's real finished run (embedded EfficientNet-Lite0, head trained at 96 px) as a Predictor."""
    return Predictor(head_run)


@pytest.fixture(scope="module")
def image(predictor):
    """A validation image, enlarged to a non-square size so the map must be mapped back through the crop."""
    path = next(csv.DictReader((predictor.run_dir / "predictions.csv").open()))["path"]
    return open_image(path).resize((150, 110), Image.Resampling.BICUBIC)


def test_explain_image_has_the_image_size_and_unit_range(predictor, image):
    result = explain_image(predictor, image)
    cam = result["cam"]
    assert cam.shape == (110, 150) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0.5
    assert result["overlay"].size == image.size and result["overlay"].mode == "RGB"
    probs = predictor.predict_images([image])[0]
    assert result["class"] == predictor.classes[int(probs.argmax())]
    assert result["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
    # The model saw only the centre crop (110 px → 96/0.875 → 96): the borders it never saw stay cold.
    assert cam[:, :8].max() == 0 and cam[:, -8:].max() == 0


def test_maps_for_two_classes_differ(predictor, image):
    first = explain_image(predictor, image, class_index=0)
    second = explain_image(predictor, image, class_index=1)
    assert first["class"] == predictor.classes[0] and second["class"] == predictor.classes[1]
    assert np.abs(first["cam"] - second["cam"]).mean() > 0.02


def test_gradcam_works_with_every_parameter_frozen(predictor, image):
    model = predictor.model
    x = predictor.normalize(predictor.prepare(image)[None])
    with torch.no_grad():  # the predicted class: a class without positive evidence has an all-zero map
        k = int(model(x).argmax())
    before = gradcam(model, x, k)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        frozen = gradcam(model, x, k)
        with torch.inference_mode():  # an inference-mode caller (as Predictor uses) must not break it either
            x_inference = predictor.normalize(predictor.prepare(image)[None])
        assert np.allclose(gradcam(model, x_inference, k), frozen, atol=1e-5)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    assert frozen.shape == (96, 96) and frozen.max() > 0.5
    assert np.allclose(before, frozen, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # no gradients left on a predicting model
    assert not model.training


def test_gradcam_on_a_tiny_vit():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3).eval()
    assert target_layer(model) is model.blocks[-1].norm1
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(1, 3, size, size)
    cams = [gradcam(model, x, k) for k in range(2)]
    for cam in cams:
        assert cam.shape == (size, size) and cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0.5
    assert np.abs(cams[0] - cams[1]).mean() > 0.02


@pytest.mark.parametrize("name, expected", [
    ("tf_efficientnet_lite0", lambda m: m.bn2),
    ("resnet18", lambda m: m.layer4[-1]),
    ("convnext_atto", lambda m: m.stages[-1]),
    ("test_vit", lambda m: m.blocks[-1].norm1),
])
def test_target_layer_defaults(name, expected):
    model = timm.create_model(name, num_classes=2)
    assert target_layer(model) is expected(model)


def test_uncrop_inverts_the_centre_crop():
    """A map put back onto the original image, then cropped as the model crops, gives the map again."""
    size, crop_pct = 64, 0.875
    cam = np.outer(np.linspace(0, 1, size), np.linspace(1, 0.2, size)).astype(np.float32)
    for width, height in [(150, 110), (90, 200), (40, 30)]:
        full = _uncrop(cam, (width, height), size, crop_pct)
        assert full.shape == (height, width)
        as_image = Image.fromarray(np.uint8(np.round(full * 255)))
        back = prepare_image(as_image, size, crop_pct, "bilinear")[0].numpy() / 255
        inner = slice(3, -3)  # resampling blurs the edges
        assert np.abs(back[inner, inner] - cam[inner, inner]).max() < 0.06, (width, height)


def test_heatmap_overlay_keeps_the_size():
    rgb = np.full((30, 50, 3), 200, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1
    overlay = heatmap_overlay(rgb, cam)
    assert overlay.size == (50, 30)
    assert heatmap_overlay(Image.fromarray(rgb), cam, alpha=0.0).tobytes() == Image.fromarray(rgb).tobytes()
    centre, corner = np.asarray(overlay)[15, 25], np.asarray(overlay)[0, 0]
    assert centre[0] > corner[0]  # hot = red in the middle, cold = blue at the corner
