"""Layer groups and the freeze plan, over several tiny timm architectures."""
import pytest
import timm
import torch
from torch import nn

from tl_core.models.layers import _MODE_SENSITIVE, apply_freeze, layer_groups, parse_freeze, set_train_mode

MODELS = ["test_efficientnet", "test_resnet", "test_convnext", "test_vit", "test_byobnet"]


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


def _input(model: nn.Module, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("coarse", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_groups_cover_every_parameter_once_with_the_head_last(name, coarse):
    model = _model(name)
    groups = layer_groups(model, coarse=coarse)
    listed = [p for g in groups for p in g.param_names]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert sum(g.num_params for g in groups) == sum(p.numel() for p in model.parameters())
    assert [g.is_head for g in groups] == [False] * (len(groups) - 1) + [True]
    assert groups[-1].name == "head" and groups[0].name == "stem"
    assert [g.index for g in groups] == list(range(len(groups)))
    assert len({g.name for g in groups}) == len(groups)
    classifier = {f"{n}" for n, _ in model.get_classifier().named_parameters()}
    assert all(any(p.endswith(c) for p in groups[-1].param_names) for c in classifier)


@pytest.mark.parametrize("name", MODELS)
def test_freeze_specs_choose_the_right_groups(name):
    model = _model(name)
    groups = layer_groups(model)
    head = groups[-1]

    stats = apply_freeze(model, groups, parse_freeze("head", groups))
    assert _trainable_names(model) == set(head.param_names)
    assert stats["trainable_params"] == head.num_params and stats["trainable_groups"] == ["head"]

    top1 = parse_freeze("top-1", groups)
    assert top1 == {head.name, groups[-2].name}
    apply_freeze(model, groups, top1)
    assert _trainable_names(model) == set(head.param_names) | set(groups[-2].param_names)
    assert min(g.index for g in groups if g.name in top1) == len(groups) - 2  # the head and the group below

    stats = apply_freeze(model, groups, parse_freeze("all", groups))
    assert all(p.requires_grad for p in model.parameters())
    assert stats["trainable_params"] == stats["total_params"]


def test_named_groups_always_include_the_head_and_unknown_names_are_explained():
    groups = layer_groups(_model("test_resnet"))
    assert parse_freeze("layer3, layer4", groups) == {"layer3", "layer4", "head"}
    assert parse_freeze("top-99", groups) == {g.name for g in groups}
    with pytest.raises(ValueError, match=r"'layer9'.*stem, layer1, layer2, layer3, layer4, head"):
        parse_freeze("layer4,layer9", groups)
    with pytest.raises(ValueError, match="bn_policy"):
        apply_freeze(_model("test_resnet"), groups, {"head"}, bn_policy="sometimes")


def _batchnorms(model: nn.Module, frozen: bool):
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
            and m.weight.requires_grad is not frozen]


@pytest.mark.parametrize("name", MODELS)
def test_frozen_batchnorm_keeps_its_statistics_only_under_frozen_eval(name):
    for bn_policy, should_change in (("eval", False), ("frozen_eval", False), ("train", True)):
        model = _model(name, drop_path_rate=0.1)
        groups = layer_groups(model)
        apply_freeze(model, groups, parse_freeze("head", groups), bn_policy)
        set_train_mode(model, bn_policy)
        assert model.training
        frozen_bn = _batchnorms(model, frozen=True)  # none in the LayerNorm models (convnext, vit)
        before = [bn.running_mean.clone() for bn in frozen_bn]
        with torch.no_grad():
            model(_input(model))
        if frozen_bn:
            changed = any(not torch.equal(b, bn.running_mean) for b, bn in zip(before, frozen_bn))
            assert changed is should_change, bn_policy
        # inside frozen blocks; parameterless modules on the model root (vit's pos_drop) follow the root
        body = [m for n, m in model.named_modules() if isinstance(m, _MODE_SENSITIVE) and "." in n
                and not n.startswith(("classifier", "fc", "head"))]
        assert body  # drop-path and BatchNorm there are off only under frozen_eval
        assert all(m.training is (bn_policy == "train") for m in body), bn_policy


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_byobnet"])
def test_trained_batchnorm_keeps_pretrained_statistics_only_under_eval(name):
    """Under "eval" a BatchNorm that trains normalises with its running statistics, so its output does not
    jump when training starts; under "frozen_eval" and "train" it uses batch statistics and updates them."""
    for bn_policy, uses_batch_stats in (("eval", False), ("frozen_eval", True), ("train", True)):
        model = _model(name)
        groups = layer_groups(model)
        apply_freeze(model, groups, parse_freeze("all", groups), bn_policy)
        set_train_mode(model, bn_policy)
        trained_bn = _batchnorms(model, frozen=False)
        assert trained_bn
        assert all(bn.training is uses_batch_stats for bn in trained_bn), bn_policy
        before = [bn.running_mean.clone() for bn in trained_bn]
        x = _input(model)
        with torch.no_grad():
            out = model(x)
            model.eval()
            reference = model(x)
        changed = any(not torch.equal(b, bn.running_mean) for b, bn in zip(before, trained_bn))
        assert changed is uses_batch_stats, bn_policy
        assert torch.allclose(out, reference, atol=1e-5) is not uses_batch_stats, bn_policy


@pytest.mark.parametrize("name", MODELS)
def test_training_only_the_head_builds_no_graph_through_frozen_layers(name):
    model = _model(name)
    groups = layer_groups(model)
    apply_freeze(model, groups, parse_freeze("head", groups))
    set_train_mode(model)
    features = model.forward_features(_input(model))
    assert features.grad_fn is None and not features.requires_grad
    model.forward_head(features).sum().backward()
    head = set(groups[-1].param_names)
    for param_name, param in model.named_parameters():
        assert (param.grad is not None) is (param_name in head), param_name


def test_models_without_group_matcher_get_one_group_per_child():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["0", "1", "head"]
    assert groups[-1].param_names == ("3.weight", "3.bias")
