"""Layer groups of a backbone (from timm's `group_matcher`), and the freeze plan applied to a model.

BatchNorm is handled by mode, not by module surgery: frozen layers keep their `nn.BatchNorm*` modules
(timm.utils.freeze would swap them for FrozenBatchNorm2d, which changes the state-dict keys that export and
predict rely on, and must be undone to unfreeze later in a fine-tune). Instead, `set_train_mode` puts
modules into eval mode by the BatchNorm policy (BN_POLICIES, from config):
- "eval" (the default): every BatchNorm normalises with its pretrained running statistics, in trained
  layers too (their scale and shift still learn); dropout and drop-path in frozen layers are off. On small
  sets unlike ImageNet, batch statistics differ so much from the running ones that switching to them
  wipes out what the probe learnt (Fashion-MNIST, top-2: features moved by 98 %, loss 0.12 → 23.8).
- "frozen_eval": as "eval" in frozen layers; BatchNorm in trained layers uses batch statistics.
- "train": every BatchNorm uses batch statistics and updates its running ones.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from torch import nn

from ..config import BN_POLICIES


@dataclass(frozen=True)
class LayerGroup:
    """A block of parameters that is frozen or trained together, ordered from input to head."""

    index: int
    name: str  # "stem", "blocks.3", "layer2", ..., "head"
    param_names: tuple[str, ...]
    num_params: int
    is_head: bool


def layer_groups(model: nn.Module, coarse: bool = True) -> list[LayerGroup]:
    """The model's layer groups, input first and the head last; every parameter is in exactly one group."""
    parameters = dict(model.named_parameters())
    matcher = _group_matcher(model, coarse)
    ordered = _timm_groups(model, matcher) if matcher is not None else _child_groups(model)
    ordered = _with_head_last(ordered, _classifier_param_names(model))
    groups, used_names = [], set()
    for index, names in enumerate(ordered):
        is_head = index == len(ordered) - 1
        if is_head:
            name = "head"
        elif index == 0 and matcher is not None:
            name = "stem"  # timm's matchers put the stem first; its parts ("conv_stem|bn1") share no path
        else:
            name = _group_name(names, matcher)
        name = _unique(name, used_names)
        count = sum(parameters[n].numel() for n in names)
        groups.append(LayerGroup(index, name, tuple(names), count, is_head))
    return groups


def parse_freeze(spec: str, groups: list[LayerGroup]) -> set[str]:
    """Names of the groups that train under `spec`: "head", "top-N", "all" or "a,b" (the head always trains)."""
    spec = (spec or "").strip()
    names = [g.name for g in groups]
    head = groups[-1].name
    if spec == "head":
        return {head}
    if spec == "all":
        return set(names)
    if spec.startswith("top-") and spec[4:].isdigit():
        below = int(spec[4:])
        return {head, *names[max(0, len(names) - 1 - below):-1]}
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in names]
    if unknown or not wanted:
        raise ValueError(f"freeze: {', '.join(map(repr, unknown)) or repr(spec)} is not a layer group; "
                         f"use head, all, top-N or names from: {', '.join(names)}")
    return {head, *wanted}


def apply_freeze(model: nn.Module, groups: list[LayerGroup], trainable: set[str],
                 bn_policy: str = "eval") -> dict:
    """Set requires_grad per group: groups named in `trainable` train, the rest are frozen."""
    _check_bn_policy(bn_policy)
    unknown = set(trainable) - {g.name for g in groups}
    if unknown:
        raise ValueError(f"trainable: unknown layer groups {sorted(unknown)}")
    parameters = dict(model.named_parameters())
    for group in groups:
        for name in group.param_names:
            parameters[name].requires_grad_(group.name in trainable)
    if model.training:  # keep frozen BatchNorm in eval mode if the model is already training
        set_train_mode(model, bn_policy)
    return {
        "trainable_params": sum(p.numel() for p in parameters.values() if p.requires_grad),
        "total_params": sum(p.numel() for p in parameters.values()),
        "trainable_groups": [g.name for g in groups if g.name in trainable],
    }


def set_train_mode(model: nn.Module, bn_policy: str = "eval") -> None:
    """model.train(), then eval mode where the BatchNorm policy keeps inference behaviour (module docstring)."""
    _check_bn_policy(bn_policy)
    model.train()
    if bn_policy == "train":
        return
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, _MODE_SENSITIVE):
            continue
        if _owner_is_frozen(name, modules) or (bn_policy == "eval" and isinstance(module, _BATCH_NORM)):
            module.eval()


# ---------------------------------------------------------------- helpers

def _mode_sensitive_types() -> tuple[type, ...]:
    """Module types that act differently in train and eval mode."""
    types: list[type] = [nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd]
    try:
        from timm.layers import DropBlock2d, DropPath
        types += [DropPath, DropBlock2d]
    except ImportError:
        pass
    return tuple(types)


_MODE_SENSITIVE = _mode_sensitive_types()
_BATCH_NORM = nn.modules.batchnorm._BatchNorm


def _owner_is_frozen(name: str, modules: dict[str, nn.Module]) -> bool:
    """Whether the nearest module at or above `name` that holds parameters has all of them frozen.

    A parameterless dropout belongs to its enclosing block; dropout at the model root (before the head) trains.
    """
    path = name
    while True:
        params = list(modules[path].parameters())
        if params:
            return not any(p.requires_grad for p in params)
        if not path:
            return False
        path = path.rpartition(".")[0]


def _check_bn_policy(bn_policy: str) -> None:
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy: {bn_policy!r} is not one of {', '.join(BN_POLICIES)}")


def _group_matcher(model: nn.Module, coarse: bool):
    """timm's group matcher (a dict of regexes, or a function), or None when the model has none."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return None
    try:
        return matcher(coarse=coarse)
    except NotImplementedError:
        return None


def _timm_groups(model: nn.Module, matcher) -> list[list[str]]:
    """Parameter names per group, in timm's order (its last, unmatched group holds the head)."""
    from timm.models import group_parameters

    by_id = group_parameters(model, matcher)
    return [list(by_id[i]) for i in sorted(by_id)]


def _child_groups(model: nn.Module) -> list[list[str]]:
    """Fallback: one group per top-level child that holds parameters (direct parameters go first)."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(name.split(".")[0] if "." in name else "", []).append(name)
    direct = groups.pop("", [])
    return ([direct] if direct else []) + list(groups.values())


def _classifier_param_names(model: nn.Module) -> set[str]:
    """Parameter names of the classifier(s), found by identity with model.get_classifier()."""
    try:
        classifier = model.get_classifier()
    except (AttributeError, NotImplementedError):
        return set()
    targets = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    names = set()
    for prefix, module in model.named_modules():
        if any(module is target for target in targets):
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()}
    return names


def _with_head_last(ordered: list[list[str]], head_names: set[str]) -> list[list[str]]:
    """Make the last group the head: timm's unmatched group when it holds the classifier, else the classifier."""
    ordered = [list(g) for g in ordered if g]
    if not head_names or head_names <= set(ordered[-1]):
        return ordered
    body = [[n for n in group if n not in head_names] for group in ordered]
    return [g for g in body if g] + [sorted(head_names)]


def _group_name(names: list[str], matcher) -> str:
    """A readable name: the text timm's regex matched most often in the group ("blocks.3", "layer2")."""
    texts = [_matched_text(n, matcher) for n in names] if isinstance(matcher, dict) else []
    texts = [t for t in texts if t]
    if texts:
        return Counter(texts).most_common(1)[0][0]  # extras timm merges in (conv_head, norm) are few
    return _common_module_path(names)


def _matched_text(param_name: str, matcher: dict) -> str | None:
    """What the first matching regex of timm's dict matcher matched at the start of `param_name`."""
    for spec in matcher.values():
        patterns = [item[0] for item in spec] if isinstance(spec, (list, tuple)) else [spec]
        for pattern in patterns:
            found = pattern and re.match(pattern, param_name)
            if found:
                return found.group(0).rstrip(".")
    return None


def _common_module_path(names: list[str]) -> str:
    """The module path all `names` share, e.g. "features.3"; the first name's top module when none."""
    paths = [n.split(".")[:-1] or [n] for n in names]
    common = paths[0]
    for path in paths[1:]:
        length = 0
        while length < min(len(common), len(path)) and common[length] == path[length]:
            length += 1
        common = common[:length]
    return ".".join(common) or names[0].split(".")[0]


def _unique(name: str, used: set[str]) -> str:
    candidate, suffix = name, 2
    while candidate in used:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    used.add(candidate)
    return candidate
