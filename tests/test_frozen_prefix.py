"""The frozen prefix computed once, the rest trained on its activations: same outputs as the whole model."""
import pytest
import timm
import torch

from tl_core.models import layers
from tl_core import worker
from tl_core.config import RunConfig
from tl_core.data.datasets import ingest_folder
from tl_core.ops.runs import create_run, read_events
from tl_core.models.frozen_prefix import PrefixSplit, stage_split_point


@pytest.mark.parametrize("name", ["test_efficientnet", "mobilenetv3_small_050", "test_convnext"])
def test_split_forward_equals_the_whole_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    groups = layers.layer_groups(model)
    trainable = layers.parse_freeze("top-2", groups)
    k = stage_split_point(model, groups, trainable)
    assert k is not None and k >= 1
    x = torch.randn(2, 3, 64, 64)
    split = PrefixSplit(model, k)
    with torch.no_grad(), split.rest() as rest:
        split_out = rest(split.prefix(x))
    with torch.no_grad():
        whole = model(x)
    torch.testing.assert_close(split_out, whole, rtol=1e-5, atol=1e-5)
    assert getattr(model, split.container_name) is split.container  # restored after the block


@pytest.mark.parametrize("name", ["test_efficientnet", "mobilenetv3_small_050"])
def test_a_multi_layer_split_gives_the_multi_layer_features(name):
    """The frozen stages' pooled outputs are cached with the activations: the features are the whole model's."""
    from tl_core.models import multilayer
    from tl_core.models.frozen_prefix import MultiLayerSplit, split_for
    torch.manual_seed(0)
    model = multilayer.build(timm.create_model(name, pretrained=False, num_classes=3), 3, "multi-layer").eval()
    groups = layers.layer_groups(model)
    for plan in ("top-1", "top-2"):
        k = stage_split_point(model, groups, layers.parse_freeze(plan, groups))
        assert k is not None and k >= 1
        split = split_for(model, k)
        assert isinstance(split, MultiLayerSplit)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(split.features(split.prefix(x)), model.forward_features(x), rtol=1e-5, atol=1e-5)
    assert stage_split_point(model, groups, layers.parse_freeze("all", groups)) is None


def test_no_split_when_the_stem_trains_or_the_layout_is_unknown():
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    groups = layers.layer_groups(model)
    assert stage_split_point(model, groups, layers.parse_freeze("all", groups)) is None
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    vit_groups = layers.layer_groups(vit)
    assert stage_split_point(vit, vit_groups, layers.parse_freeze("top-2", vit_groups)) is None


def test_partial_fine_tune_runs_the_frozen_prefix_once(small_sample):
    dataset = ingest_folder(small_sample)
    run_dir = create_run(RunConfig(dataset_dir=str(dataset.root), freeze="top-2", epochs=2, image_size=64,
                                   early_stopping=0))
    metrics = worker.run(run_dir)
    notices = [e["message"] for e in read_events(run_dir) if e["event"] == "notice"]
    assert any("frozen layers run once" in m for m in notices)
    assert metrics["val_acc"] >= 0.5  # 4 well-separated classes, chance is 25 %
