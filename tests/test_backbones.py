"""Backbones: embedded weights really are ImageNet weights, hub fails fast offline, files load safely."""
import dataclasses
import socket
import time

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from tl_core.models import backbones
from tl_core.models.backbones import (CATALOGUE, EMBEDDED_MODEL, WeightsUnavailable, catalogue_rows, create_model,
                                      data_config, search_models, weights_available_offline)
from tl_core.data.augment import make_augment, normalize
from tl_core.data.datasets import prepare_image

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
TINY_MODELS = ["test_efficientnet", "test_resnet", "test_convnext", "test_vit", "test_byobnet"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A fresh workspace and an empty hub cache, so no test depends on what this machine downloaded."""
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "workspace"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(0)


def _body(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- embedded weights

def test_embedded_weights_rank_the_cat_photo_as_a_cat():
    from skimage.data import chelsea

    model = create_model(EMBEDDED_MODEL, num_classes=1000, weights="embedded").eval()
    cfg = data_config(model)  # tl_core's own preprocessing, as training and Predictor use it
    pixels = prepare_image(Image.fromarray(chelsea()), cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"])
    image = normalize(pixels[None], cfg["mean"], cfg["std"])
    with torch.no_grad():
        probs = model(image).softmax(-1)[0]
    assert int(probs.argmax()) in IMAGENET_CATS
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.5


def test_embedded_weights_are_converted_once_and_cached_as_safetensors(monkeypatch):
    first = create_model(EMBEDDED_MODEL, num_classes=1000, weights="embedded").state_dict()
    cache = backbones._embedded_cache_path()
    assert cache.is_file() and cache.suffix == ".safetensors"
    monkeypatch.setattr(backbones, "_embedded_package_path", lambda: None)  # the cache alone must do
    _assert_same(first, create_model(EMBEDDED_MODEL, num_classes=1000, weights="embedded").state_dict())


def test_embedded_weights_get_a_fresh_head_when_the_class_count_differs():
    imagenet = create_model(EMBEDDED_MODEL, num_classes=1000, weights="embedded").state_dict()
    model = create_model(EMBEDDED_MODEL, num_classes=4, weights="embedded")
    assert model.get_classifier().out_features == 4
    _assert_same(_body(imagenet), _body(model.state_dict()))
    assert data_config(model)["mean"] == (0.5, 0.5, 0.5)  # TF EfficientNet-Lite preprocessing


def test_embedded_weights_only_exist_for_the_embedded_model():
    with pytest.raises(WeightsUnavailable, match=EMBEDDED_MODEL):
        create_model("resnet18", num_classes=3, weights="embedded")


def test_the_name_users_know_builds_the_architecture_the_embedded_weights_need():
    from tl_core.models.backbones import architecture

    model = create_model("efficientnet_lite0", num_classes=3, weights="embedded")
    assert architecture(model) == EMBEDDED_MODEL  # TF "same" padding, eps 1e-3, mean/std 0.5
    assert architecture(create_model("efficientnet_lite0", num_classes=3, weights="none")) == "efficientnet_lite0"


# ---------------------------------------------------------------- hub weights

def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def _assert_fails_fast_with_advice(name: str):
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable) as caught:
        create_model(name, num_classes=3, weights="hub")
    assert time.monotonic() - started < 20
    message = str(caught.value)
    assert "internet" in message and ".safetensors" in message and EMBEDDED_MODEL in message


def test_hub_fails_fast_when_the_hub_refuses_connections(monkeypatch):
    monkeypatch.setattr(backbones, "_HUB_ENDPOINT", "http://127.0.0.1:9")
    _assert_fails_fast_with_advice("test_efficientnet")
    assert not weights_available_offline("test_efficientnet")


@pytest.mark.skipif(_hub_reachable(), reason="this machine is online; the refused-endpoint test covers it")
def test_hub_fails_fast_on_this_offline_machine():
    _assert_fails_fast_with_advice("resnet18.a1_in1k")


def test_hub_weights_in_the_cache_load_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "_HUB_ENDPOINT", "http://127.0.0.1:9")
    published = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    repo = tmp_path / "hub" / "models--timm--test_efficientnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file(published, str(snapshot / "model.safetensors"))

    assert weights_available_offline("test_efficientnet")
    model = create_model("test_efficientnet", num_classes=5, weights="hub")
    assert model.get_classifier().out_features == 5
    _assert_same(_body(published), _body(model.state_dict()))


# ---------------------------------------------------------------- weights from a file

def test_safetensors_round_trip_keeps_the_body_and_makes_a_fresh_head(tmp_path):
    trained = create_model("test_efficientnet", num_classes=5, weights="none").state_dict()
    path = tmp_path / "trained.safetensors"
    safetensors.torch.save_file(trained, str(path))

    same_classes = create_model("test_efficientnet", num_classes=5, weights=str(path)).state_dict()
    _assert_same(trained, same_classes)
    other_classes = create_model("test_efficientnet", num_classes=3, weights=str(path))
    assert other_classes.get_classifier().out_features == 3
    _assert_same(_body(trained), _body(other_classes.state_dict()))


def test_weights_of_another_backbone_are_refused_with_the_keys_named(tmp_path):
    path = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file(create_model("test_resnet", 5, weights="none").state_dict(), str(path))
    with pytest.raises(WeightsUnavailable, match="does not fit test_efficientnet.*missing"):
        create_model("test_efficientnet", num_classes=5, weights=str(path))


_unpickled = []


def _record_unpickling():
    _unpickled.append(True)
    return "ran"


class _Payload:
    def __reduce__(self):  # unpickling this would call a function: what weights_only must prevent
        return (_record_unpickling, ())


def test_pickled_python_objects_are_never_unpickled(tmp_path):
    tensors = create_model("test_efficientnet", num_classes=5, weights="none").state_dict()
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": tensors, "extra": _Payload()}, path)
    with pytest.raises(WeightsUnavailable, match="pickled Python objects"):
        create_model("test_efficientnet", num_classes=5, weights=str(path))
    assert not _unpickled

    torch.save({"state_dict": tensors}, path)  # a tensors-only checkpoint is fine
    _assert_same(tensors, create_model("test_efficientnet", 5, weights=str(path)).state_dict())


def test_missing_weights_file_is_explained(tmp_path):
    with pytest.raises(WeightsUnavailable, match="no such weights file"):
        create_model("test_efficientnet", num_classes=5, weights=str(tmp_path / "nope.safetensors"))


# ---------------------------------------------------------------- catalogue, search, models

def test_catalogue_rows_have_every_fact_and_the_embedded_model_works_offline():
    rows = catalogue_rows()
    fields = {f.name for f in dataclasses.fields(backbones.BackboneInfo)} | {"offline"}
    assert len(rows) == len(CATALOGUE) >= 10
    for row in rows:
        assert set(row) == fields
        assert row["params_m"] > 0 and row["gmacs"] > 0 and 50 < row["top1"] < 100 and row["note"]
        assert timm.is_model(row["name"]) and timm.list_pretrained(row["name"].split(".")[0] + "*")
    assert {r["name"]: r["offline"] for r in rows}[EMBEDDED_MODEL] is True


def test_search_finds_pretrained_names_best_match_first():
    assert "tf_efficientnet_lite0.in1k" in search_models("lite0")
    assert search_models("resnet18")[0].startswith("resnet18.")
    assert len(search_models("", limit=7)) == 7


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="search_models"):
        create_model("no_such_model", num_classes=2, weights="none")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_random_init_model_has_the_requested_outputs(name):
    model = create_model(name, num_classes=7, weights="none", drop_rate=0.1).eval()
    size = data_config(model)["input_size"]
    with torch.no_grad():
        out = model(torch.randn(2, *size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_data_config_and_transforms():
    model = create_model("test_efficientnet", num_classes=3, weights="none")
    cfg = data_config(model, image_size=96)
    assert cfg["input_size"] == (3, 96, 96)
    assert set(cfg) == {"input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode"}
    pixels = prepare_image(Image.new("RGB", (140, 120), (200, 30, 30)), 96, cfg["crop_pct"], cfg["interpolation"])
    for augment in ("light", "strong"):
        assert make_augment(augment, 96)(pixels[None]).shape == (1, 3, 96, 96)
    assert make_augment("none", 96) is None
    with pytest.raises(ValueError, match="augment"):
        make_augment("extreme", 96)
    with pytest.raises(ValueError, match="fixed input size"):
        data_config(create_model("test_vit", num_classes=3, weights="none"), image_size=96)


# ---------------------------------------------------------------- uploaded weights

@pytest.mark.parametrize("content, words", [
    (b"", "empty file (0 bytes)"),
    (b"garbage, not weights", "not a PyTorch weights file"),
    ("truncated", "a damaged or cut-short PyTorch file"),
])
def test_a_broken_torch_file_is_named_for_what_is_wrong_not_called_pickled(tmp_path, content, words):
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save(create_model("test_efficientnet", num_classes=5, weights="none").state_dict(), path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(WeightsUnavailable) as error:
        create_model("test_efficientnet", num_classes=5, weights=str(path))
    assert str(error.value).startswith(f"weights.pth: {words}") and "pickled" not in str(error.value)


def test_uploaded_weights_are_kept_by_content_never_replaced_by_name(tmp_path):
    first = safetensors.torch.save({"w": torch.zeros(4)})
    other = safetensors.torch.save({"w": torch.ones(4)})  # another file: same name, same size
    assert len(first) == len(other)
    kept = backbones.store_uploaded_weights("../my weights.safetensors", first, tmp_path)
    assert kept.name == "my_weights.safetensors" and kept.read_bytes() == first
    assert kept.parent.parent == tmp_path / "weights" and backbones.uploaded_weights_digest(kept) == kept.parent.name
    again = backbones.store_uploaded_weights("renamed.safetensors", first, tmp_path)
    assert again.parent == kept.parent  # the same bytes: the same folder
    replaced = backbones.store_uploaded_weights("my weights.safetensors", other, tmp_path)
    assert replaced != kept and replaced.read_bytes() == other
    assert kept.read_bytes() == first  # runs that use the first file still find it unchanged
    kept.write_bytes(b"damaged")  # a damaged copy is written again
    assert backbones.store_uploaded_weights("my weights.safetensors", first, tmp_path).read_bytes() == first
    assert backbones.uploaded_weights_digest(tmp_path / "elsewhere.safetensors") is None
