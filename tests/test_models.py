"""Tests for the model zoo `ann2snn.models`: registry, shapes, activation sites, tracing."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
from torch import nn

from ann2snn.models import _registry, create_model, list_models, register_model
from ann2snn.nn.activations import QCFS, create_activation, list_activations

MODELS = ["cnn", "resnet18", "resnet20", "resnet34", "vgg16"]

#: Expected number of activation sites per model.
EXPECTED_ACTS = {
    "vgg16": 13 + 2,  # 13 conv blocks + 2 hidden Linear
    "resnet20": 1 + 3 * 3 * 2,  # stem + 9 blocks × 2
    "resnet18": 1 + 8 * 2,  # stem + 8 blocks × 2
    "resnet34": 1 + 16 * 2,  # stem + 16 blocks × 2
    "cnn": 3 + 1,  # 3 conv blocks + 1 hidden Linear
}

#: Module types allowed besides the activations: none of them is a nonlinearity
#: (max-pool aside, which only appears with pool="max").
STRUCTURAL = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)


def act_type(act: str) -> type[nn.Module]:
    return type(create_activation(act, levels=4))


def activations(model: nn.Module, act: str = "qcfs") -> list[tuple[str, nn.Module]]:
    kind = act_type(act)
    return [(name, m) for name, m in model.named_modules() if type(m) is kind]


def leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


class ActLeafTracer(fx.Tracer):
    """Keeps activation modules as single ``call_module`` nodes (what a converter wants)."""

    def __init__(self, kind: type[nn.Module]):
        super().__init__()
        self.kind = kind

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.kind) or super().is_leaf_module(m, qualname)


# ----------------------------------------------------------------------------- registry


def test_list_models():
    assert list_models() == sorted(list_models())
    assert set(MODELS) <= set(list_models())


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError) as err:
        create_model("vgg17")
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", MODELS)
def test_invalid_pool_names_the_fix(name):
    with pytest.raises(ValueError) as err:
        create_model(name, pool="sum")
    assert "'avg'" in str(err.value) and "'max'" in str(err.value)


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError) as err:
        create_model("cnn", act="gelu")
    for name in list_activations():
        assert name in str(err.value)


@pytest.mark.parametrize("field", ["num_classes", "in_channels", "image_size"])
def test_invalid_sizes(field):
    with pytest.raises(ValueError, match=field):
        create_model("cnn", **{field: 0})


def test_register_model_uses_function_name():
    @register_model
    def tiny_test_model(num_classes=10, in_channels=3, **kwargs) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert "tiny_test_model" in list_models()
        model = create_model("tiny_test_model", num_classes=7)
        assert model(torch.randn(2, 3, 4, 4)).shape == (2, 7)
    finally:
        _registry._MODELS.pop("tiny_test_model", None)
    assert "tiny_test_model" not in list_models()


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("act", list_activations())
@pytest.mark.parametrize("name", MODELS)
def test_builds_for_every_activation_28x28(name, act):
    model = create_model(name, num_classes=10, in_channels=1, act=act, image_size=28).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)

    sites = activations(model, act)
    assert len(sites) == EXPECTED_ACTS[name]
    assert len({id(m) for _, m in sites}) == len(sites)  # one fresh module per site
    # The only nonlinearities are the activation modules.
    for m in leaves(model):
        assert isinstance(m, (*STRUCTURAL, act_type(act))), type(m)


@pytest.mark.parametrize("name", MODELS)
def test_forward_32x32_100_classes(name):
    model = create_model(name, num_classes=100, in_channels=3, image_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)


def test_train_mode_forward_backward():
    model = create_model("resnet20", num_classes=10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for _, m in activations(model):
        assert m.log_threshold.grad is not None


def test_vgg16_classifier_input_follows_image_size():
    assert create_model("vgg16", image_size=224).classifier[1].in_features == 512 * 7 * 7
    assert create_model("vgg16", image_size=32).classifier[1].in_features == 512
    assert create_model("vgg16", image_size=28).classifier[1].in_features == 512


def test_cnn_classifier_input_follows_image_size():
    assert create_model("cnn", image_size=28).classifier[1].in_features == 64 * 7 * 7
    assert create_model("cnn", image_size=32).classifier[1].in_features == 64 * 8 * 8


def test_resnet18_64x64():
    model = create_model("resnet18", num_classes=10, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_vgg16_layout_and_dropout():
    model = create_model("vgg16", dropout=0.3)
    assert isinstance(model.features, nn.Sequential)
    assert isinstance(model.classifier, nn.Sequential)
    modules = dict(model.named_modules())
    assert isinstance(modules["features.0"], nn.Conv2d)
    assert isinstance(modules["features.1"], nn.BatchNorm2d)
    assert isinstance(modules["features.2"], QCFS)
    assert isinstance(modules["features.6"], nn.AvgPool2d)
    assert isinstance(model.classifier[-1], nn.Linear)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2 and all(d.p == 0.3 for d in dropouts)
    assert all(d.p == 0.0 for d in create_model("vgg16").modules() if isinstance(d, nn.Dropout))


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("name,count", [("vgg16", 5), ("cnn", 2)])
def test_pool_choice(name, count):
    avg = create_model(name, pool="avg")
    mx = create_model(name, pool="max")
    avg_pools = [m for m in avg.modules() if isinstance(m, nn.AvgPool2d)]
    max_pools = [m for m in mx.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(avg_pools) == count and not any(isinstance(m, nn.MaxPool2d) for m in avg.modules())
    assert len(max_pools) == count and not any(isinstance(m, nn.AvgPool2d) for m in mx.modules())
    assert all(p.ceil_mode for p in avg_pools + max_pools)


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet34"])
def test_resnets_accept_pool_but_have_no_stem_pooling(name):
    model = create_model(name, pool="max")
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())


# ----------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("name", MODELS)
def test_thresholds_are_per_layer(name):
    model = create_model(name, act="qcfs", levels=4, init_threshold=3.0)
    sites = [m for _, m in activations(model)]
    params = [m.log_threshold for m in sites]
    assert len({id(p) for p in params}) == len(sites)
    assert all(m.levels == 4 for m in sites)
    assert all(float(m.threshold.detach()) == pytest.approx(3.0) for m in sites)
    # Each threshold is its own parameter of the model ...
    names = [n for n, _ in model.named_parameters() if n.endswith("log_threshold")]
    assert len(names) == len(sites)
    # ... and moving one leaves the others alone.
    sites[0].set_threshold(5.0)
    assert float(sites[0].threshold.detach()) == pytest.approx(5.0)
    assert all(float(m.threshold.detach()) == pytest.approx(3.0) for m in sites[1:])


# ----------------------------------------------------------------------------- tracing


@pytest.mark.parametrize("act", list_activations())
@pytest.mark.parametrize("name", MODELS)
def test_symbolic_trace(name, act):
    model = create_model(name, num_classes=10, act=act).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_trace_with_activation_leaves(name):
    """Each activation is one graph node; the output comes straight from the last Linear."""
    model = create_model(name, act="qcfs")
    graph = ActLeafTracer(QCFS).trace(model)
    modules = dict(model.named_modules())
    act_nodes = [
        n for n in graph.nodes if n.op == "call_module" and isinstance(modules[n.target], QCFS)
    ]
    assert len(act_nodes) == EXPECTED_ACTS[name]
    assert len({n.target for n in act_nodes}) == len(act_nodes)  # no module called twice

    (output,) = [n for n in graph.nodes if n.op == "output"]
    last = output.args[0]
    assert last.op == "call_module" and isinstance(modules[last.target], nn.Linear)


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet34"])
def test_resnet_post_add_activation(name):
    """In every BasicBlock the residual sum feeds a separate activation (``act2``)."""
    model = create_model(name, act="qcfs")
    graph = ActLeafTracer(QCFS).trace(model)
    adds = [
        n for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)
    ]
    assert len(adds) == (EXPECTED_ACTS[name] - 1) // 2  # one per block
    for add in adds:
        (user,) = add.users
        assert user.op == "call_module" and user.target.endswith("act2")
