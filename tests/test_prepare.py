"""`prepare`: any traceable model in, a convertible quantized ANN out; open registries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, model_signature, randomize
from torch import Tensor, nn

import ann2snn
from ann2snn import QCFS, ConversionError, SpikeSpec, check, convert, prepare, run
from ann2snn.nn.activations import register_activation
from ann2snn.training import train_one_epoch

torchvision = pytest.importorskip("torchvision")


class Spellings(nn.Module):
    """ReLU in every spelling prepare must catch, a shared module, and a max-pool."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fcs = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        self.shared = nn.ReLU()
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 3, 4, 4)
        x = self.pool(self.shared(self.c1(x)))  # (B, 4, 2, 2)
        x = F.max_pool2d(torch.relu(self.c2(x)), 1)
        x = x.flatten(1)  # (B, 16)
        x = self.shared(self.fcs[0](x))
        x = self.fcs[1](x).relu()
        x = torch.clamp(self.fcs[2](x), min=0)
        x = self.relu6(self.fcs[3](x))
        return self.out(x)


def test_prepare_swaps_every_site_once_and_never_mutates_its_input():
    torch.manual_seed(0)
    model = Spellings().eval()
    sig = model_signature(model)
    p = prepare(model, "qcfs", levels=4)
    assert_unchanged(model, sig)
    assert ann2snn.is_prepared(p) and not ann2snn.is_prepared(model)
    acts = [(n, m) for n, m in p.named_modules() if isinstance(m, QCFS)]
    # shared ×2, torch.relu, relu(), clamp, ReLU6: one fresh activation per call site.
    assert len(acts) == 6
    assert len({id(m) for _, m in acts}) == 6
    assert {"shared", "shared_1", "relu6"} <= {n for n, _ in acts}
    assert not any(isinstance(m, nn.ReLU | nn.ReLU6 | nn.MaxPool2d) for m in p.modules())
    assert sum(isinstance(m, nn.AvgPool2d) for m in p.modules()) == 2
    assert all(m.levels == 4 for _, m in acts)
    assert not p.training  # the mode of the input
    x = torch.randn(5, 3, 4, 4)
    assert p(x).shape == (5, 3)
    # Preparing again gives the same names: what `load` relies on to rebuild a model.
    assert list(prepare(model).state_dict()) == list(p.state_dict())
    # pool="max" keeps max-pooling (for neurons with a spiking max-pool).
    kept = prepare(model, pool="max")
    assert sum(isinstance(m, nn.MaxPool2d) for m in kept.modules()) == 1
    assert not check(kept, "if").ok and check(kept, "cif").ok


def test_calibration_sets_lambda_to_the_percentile_of_each_relu():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU6(), nn.Linear(8, 2))
    with torch.no_grad():
        model[2].weight.mul_(20)  # pushes the ReLU6 site past 6: λ is capped there
    x = torch.randn(2000, 5)
    with torch.no_grad():
        a1 = F.relu(model[0](x))
        a2 = F.relu6(model[2](a1))
    p = prepare(model, "qcfs", calibration=x)
    lam = [float(m.threshold.detach()) for m in p.modules() if isinstance(m, QCFS)]
    s = a1.flatten().sort().values
    assert lam[0] == pytest.approx(float(s[int(0.999 * s.numel()) - 1]), rel=1e-5)
    assert lam[1] == pytest.approx(
        min(6.0, float(a2.flatten().kthvalue(int(0.999 * a2.numel())).values))
    )
    # Without data: the activation's default (or init_threshold).
    assert {
        float(m.threshold.detach()) for m in prepare(model).modules() if isinstance(m, QCFS)
    } == {8.0}
    p2 = prepare(model, init_threshold=2.0)
    assert {float(m.threshold.detach()) for m in p2.modules() if isinstance(m, QCFS)} == {2.0}


def test_prepare_reports_unsupported_and_untraceable_models_by_name():
    bad = nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 2))
    with pytest.raises(ConversionError, match=r"(?s)cannot prepare: 1 unsupported.*GELU at 1"):
        prepare(bad)

    class Gate(nn.Module):
        def forward(self, x):
            return F.relu(x) if x.sum() > 0 else x

    with pytest.raises(ConversionError, match=r"cannot prepare: not traceable.*'1'"):
        prepare(nn.Sequential(nn.Linear(3, 3), Gate()))
    with pytest.raises(ValueError, match="act: unknown activation 'qcf'"):
        prepare(nn.Sequential(nn.ReLU()), act="qcf")
    with pytest.raises(ValueError, match="pool must be"):
        prepare(nn.Sequential(nn.ReLU()), pool="sum")
    with pytest.raises(ConversionError, match="no ReLU-like activation"):
        prepare(nn.Linear(3, 3))


def test_shape_assertions_and_metadata_are_stateless():
    """timm-style `torch._assert(x.ndim == 4)` and shape arithmetic are not alarms."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 2)

        def forward(self, x):
            torch._assert(x.ndim == 4, "expected NCHW")
            b = x.shape[0]
            y = F.relu(self.conv(x))
            return self.fc(y.reshape(b, y.size(1) * 16))

    report = check(prepare(Net()))
    assert report.ok, str(report)
    assert {o.op for o in report.ops} >= {"torch._assert", "operator.eq", "operator.getitem"}


TORCHVISION = ["resnet18", "vgg11_bn", "mobilenet_v2", "resnet34", "resnet50"]


@pytest.mark.parametrize("name", TORCHVISION + [pytest.param("vgg16_bn", marks=pytest.mark.slow)])
def test_torchvision_models_prepare_and_convert_exactly_with_gn(name):
    """prepare(act="qcfs", L=4) → convert(gn, τ=4) equals the prepared ANN at T = 1; with
    IF neurons the SNN's output approaches the ANN's as T grows."""
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(name, num_classes=10), 0)
    x = torch.randn(4, 3, 32, 32)
    p = prepare(model, "qcfs", levels=4, calibration=torch.randn(8, 3, 32, 32)).eval()
    assert check(p, "gn").ok and check(p, "if").ok
    with torch.no_grad():
        ann = p(x)
        assert ann.abs().max() > 0
        gn = run(convert(p, "gn", tau=4), x, 1)
        torch.testing.assert_close(gn, ann, rtol=1e-4, atol=1e-5)
        snn = convert(p, "if")
        err = [float((run(snn, x, T) - ann).abs().mean()) for T in (2, 16, 128)]
    # The rate approaches clip(z, 0, λ), not the L-level ANN, so the error falls to a floor
    # (the quantization gap) instead of to 0.
    assert err[1] < 0.8 * err[0] and err[2] < 0.8 * err[0], err


def test_timm_resnet18_prepares_and_converts_exactly():
    timm = pytest.importorskip("timm")
    model = randomize(timm.create_model("resnet18", num_classes=10), 0)
    p = prepare(model, calibration=torch.randn(8, 3, 32, 32)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run(convert(p, "gn", tau=4), x, 1), p(x), rtol=1e-4, atol=1e-5)


def test_timm_shape_assertions_are_not_unsupported():
    timm = pytest.importorskip("timm")
    report = check(prepare(timm.create_model("regnetx_002", num_classes=10)))
    assert report.ok, str(report)


# --------------------------------------------------------------------------- open registries


class StepQuant(nn.Module):
    """A user's own quantized activation: round(z/s) clipped to [0, L], times s (no shift
    trick: it declares shift ½ so the neuron's v(0) = θ/2 reproduces the rounding)."""

    def __init__(self, levels: int = 4, init_threshold: float = 2.0):
        super().__init__()
        self.levels = levels
        self.scale = nn.Parameter(torch.tensor(init_threshold / levels))

    def forward(self, z: Tensor) -> Tensor:
        q = torch.clamp(z / self.scale, 0, self.levels)
        q = q + (torch.floor(q + 0.5) - q).detach()  # straight-through rounding
        return q * self.scale

    def spike_spec(self) -> SpikeSpec:
        return SpikeSpec(self.scale.detach() * self.levels, shift=0.5, levels=self.levels)

    def set_threshold(self, value: float) -> None:
        with torch.no_grad():
            self.scale.fill_(float(value) / self.levels)


register_activation("user_stepquant")(lambda levels=4, **kw: StepQuant(levels, **kw))


@ann2snn.register_neuron("user_pair_if")
class PairIF(ann2snn.SpikingNeuron):
    """A user's own neuron: IF that may emit up to two spikes of θ/2 per step."""

    @staticmethod
    def kernel(v: Tensor, x: Tensor, out: Tensor, half: Tensor) -> Tensor:
        v.add_(x)
        torch.div(v, half, out=out).floor_().clamp_(0, 2).mul_(half)
        v.sub_(out)
        return out

    def kernel_args(self) -> tuple:
        return (self.threshold / 2,)

    @property
    def v0(self) -> Tensor:
        return self.v_init * self.threshold / 2


def test_user_activation_and_user_neuron_train_convert_and_simulate():
    assert "user_pair_if" in ann2snn.list_neurons()
    assert "user_stepquant" in ann2snn.list_activations()
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3),
    )  # fmt: skip
    p = prepare(model, act="user_stepquant", levels=2)
    assert sum(isinstance(m, StepQuant) for m in p.modules()) == 2
    x = torch.randn(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, :, :4].mean((1, 2, 3)) > 0.2).long()
    before = [m.scale.item() for m in p.modules() if isinstance(m, StepQuant)]
    opt = torch.optim.SGD(p.parameters(), lr=0.05)
    train_one_epoch(p, [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)], opt)
    after = [m.scale.item() for m in p.modules() if isinstance(m, StepQuant)]
    assert before != after  # the user's activation trained (its scale has a gradient)
    p.eval()
    snn = convert(p, "user_pair_if")
    assert [type(n) for _, n in snn.spiking_layers()] == [PairIF, PairIF]
    assert [float(n.threshold) for _, n in snn.spiking_layers()] == pytest.approx(
        [a * 2 for a in after]
    )
    with torch.no_grad():
        ann = p(x)
        # L = 2 levels, two half-θ quanta per step: exact at T = 1, like a group neuron.
        torch.testing.assert_close(run(snn, x, 1), ann, rtol=1e-4, atol=1e-5)
    sim = ann2snn.simulate(snn, [(x, y)], T=4, progress=False)
    assert len(sim.accuracy) == 4


def test_register_neuron_refuses_non_neurons_and_name_clashes():
    with pytest.raises(TypeError, match="not a subclass"):
        ann2snn.register_neuron("bad")(nn.ReLU)
    with pytest.raises(ValueError, match="already registered"):
        ann2snn.register_neuron("if")(PairIF)
    assert ann2snn.register_neuron("user_pair_if")(PairIF) is PairIF  # idempotent
    with pytest.raises(ValueError, match="neuron 'if' takes no option 'tau'"):
        convert(prepare(nn.Sequential(nn.Linear(2, 2), nn.ReLU())), "if", tau=4)
