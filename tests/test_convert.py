"""Converter: activation capture, calibration, support report, BN folding, module hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_unchanged,
    images,
    make_mlp,
    make_resnet,
    make_vgg,
    model_signature,
    randomize,
)
from torch import Tensor, nn

import ann2snn
from ann2snn import (
    QCFS,
    ConversionError,
    IFNeuron,
    SpikingNetwork,
    check,
    convert,
    fold_bn,
    run,
)

# --------------------------------------------------------------------------- activation capture


class ReluZoo(nn.Module):
    """Every spelling of ReLU (and of clipped ReLU) the converter should catch."""

    def __init__(self):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(4, 4) for _ in range(9))
        self.relu6 = nn.ReLU6()
        self.relu = nn.ReLU()
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        f = self.fcs
        x = F.relu(f[0](x))
        x = torch.relu(f[1](x))
        x = f[2](x).relu()
        x = torch.clamp(f[3](x), min=0)
        x = self.relu6(f[4](x))
        x = torch.clamp(f[5](x), 0, 2.5)
        x = f[6](x).clamp(0, 3.0)
        x = self.relu(f[7](x))
        x = F.relu6(f[8](x))
        return self.out(x)


def test_all_relu_spellings_become_neurons():
    torch.manual_seed(0)
    model = ReluZoo().eval()
    x = torch.randn(256, 4)
    report = check(model)
    assert report.ok
    assert sum(o.status == "neuron" for o in report.ops) == 9
    snn = convert(model, calibration=x)
    assert len(snn.layers) == 9
    layers = list(snn.spiking_layers())
    assert all(isinstance(n, IFNeuron) for _, n in layers)
    # No activation survived in the converted graph.
    targets = [n.target for n in snn.body.graph.nodes if n.op in ("call_function", "call_method")]
    for t in targets:
        assert t not in (F.relu, torch.relu, torch.clamp, F.relu6, "relu", "clamp")
    kept = {id(n.ann_activation) for _, n in layers}  # what ANN mode replays
    assert not any(
        isinstance(m, nn.ReLU | nn.Hardtanh) for m in snn.body.modules() if id(m) not in kept
    )
    # Clip values become thresholds; plain ReLUs are calibrated (v(0) = 0 for them).
    theta = [float(n.threshold) for _, n in layers]
    assert theta[4] == 6.0 and theta[5] == 2.5 and theta[6] == 3.0 and theta[8] == 6.0
    assert snn.config["calibrated_layers"] == 5
    assert all(float(n.v0) == 0.0 for _, n in layers)
    assert snn(x[:8].unsqueeze(0).expand(4, 8, 4)).shape == (4, 8, 3)


def test_relu6_and_clamp_need_no_calibration():
    model = nn.Sequential(
        nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 4), nn.Hardtanh(0.0, 2.0), nn.Linear(4, 2)
    )
    snn = convert(model)
    assert [float(n.threshold) for _, n in snn.spiking_layers()] == [6.0, 2.0]


def test_plain_relu_without_calibration_raises():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    sig = model_signature(model)
    with pytest.raises(ConversionError, match="calibration"):
        convert(model)
    assert_unchanged(model, sig)


def nearest_rank(values: Tensor, q: float) -> float:
    s = values.flatten().sort().values
    k = -(-int(round(q * 10)) * s.numel() // 1000)  # ceil(q/100 · n) for q in tenths
    return float(s[k - 1])


@pytest.mark.parametrize("as_loader", [False, True])
def test_calibrated_thresholds_are_the_999th_percentile(as_loader):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    ).eval()
    x = torch.randn(3000, 5)
    with torch.no_grad():
        a1 = model[1](model[0](x))
        a2 = model[3](model[2](a1))
    if as_loader:
        data = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, torch.zeros(3000)), batch_size=1000
        )
    else:
        data = x
    snn = convert(model, calibration=data)
    for (_, n), acts in zip(snn.spiking_layers(), (a1, a2)):
        theta = float(n.threshold)
        assert theta == nearest_rank(acts, 99.9)
        # ... which is the 99.9th percentile up to one order statistic.
        s = acts.flatten().sort().values
        lo, hi = float(torch.quantile(s, 0.998)), float(s[-1])
        assert lo <= theta <= hi
        assert float(torch.quantile(s, 0.999)) == pytest.approx(theta, rel=0.05)
    # A different percentile moves the thresholds accordingly.
    snn50 = convert(model, calibration=x, percentile=50.0)
    assert float(next(snn50.spiking_layers())[1].threshold) == nearest_rank(a1, 50.0)


def test_percentile_is_nearest_rank_without_float_noise():
    """99.9 % of 1000 values is rank 999 exactly (0.999·1000 is 999.0000000000001 in
    floating point, which must not round up to the maximum)."""
    x = torch.arange(1, 1001, dtype=torch.float32).reshape(1000, 1)
    snn = convert(nn.Sequential(nn.ReLU()), calibration=x)
    assert float(next(snn.spiking_layers())[1].threshold) == 999.0
    snn = convert(nn.Sequential(nn.ReLU()), calibration=x, percentile=99.95)
    assert float(next(snn.spiking_layers())[1].threshold) == 1000.0
    # A dead layer (all zeros) still gets a positive threshold.
    snn = convert(nn.Sequential(nn.ReLU()), calibration=-x)
    assert float(next(snn.spiking_layers())[1].threshold) > 0


# --------------------------------------------------------------------------- unsupported ops


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), QCFS(4), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1), nn.GELU()
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.features(x)
        y = torch.sigmoid(y) * y
        return self.head(y.flatten(1))


def test_unsupported_ops_are_reported_by_name_and_nothing_is_converted():
    model = Unsupported()
    sig = model_signature(model)
    with pytest.raises(ConversionError) as info:
        convert(model)
    msg = str(info.value)
    assert "features.2" in msg and "MaxPool2d" in msg and "pool='avg'" in msg
    assert "features.4" in msg and "GELU" in msg
    assert "torch.sigmoid" in msg
    assert "operator.mul" in msg and "product of two" in msg
    assert "4 unsupported" in msg and "nothing was converted" in msg
    assert_unchanged(model, sig)
    assert not any(isinstance(m, ann2snn.SpikingNeuron) for m in model.modules())


def test_single_unsupported_maxpool_message():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), QCFS(4), nn.MaxPool2d(2))
    report = check(model)
    assert [o.status for o in report.ops] == ["stateless", "neuron", "unsupported"]
    with pytest.raises(ConversionError, match=r"MaxPool2d at 2: .*pool='avg'"):
        convert(model)
    # The consistent-IF neuron has a spiking max-pool.
    assert check(model, neuron="cif").ok


def test_check_report_lists_every_op():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.act = QCFS(4)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(64, 2)

        def forward(self, x):
            y = self.act(self.bn(self.conv(x)))
            y = F.relu(y + 0.5 * y)
            y = self.pool(y).flatten(1)
            return self.fc(torch.tanh(y))

    model = Net()
    report = check(model)
    ops = [(o.name, o.op, o.status) for o in report.ops]
    assert ops == [
        ("conv", "Conv2d", "stateless"),
        ("bn", "BatchNorm2d", "stateless"),
        ("act", "QCFS", "neuron"),
        ("mul", "operator.mul", "stateless"),
        ("add", "operator.add", "stateless"),
        ("relu", "F.relu", "neuron"),
        ("pool", "AvgPool2d", "stateless"),
        ("flatten", "Tensor.flatten", "stateless"),
        ("tanh", "torch.tanh", "unsupported"),
        ("fc", "Linear", "stateless"),
    ]
    assert report.traced and not report.ok
    assert [o.name for o in report.unsupported] == ["tanh"]
    text = str(report)
    assert "tanh" in text and "1 unsupported" in text and "10 ops" in text
    assert report.to_dict()["ok"] is False


# --------------------------------------------------------------------------- no mutation


@pytest.mark.parametrize("neuron", ["if", "gn"])
def test_convert_never_mutates_its_input(neuron):
    model = make_resnet(4, seed=1).train()  # a training-mode model stays in training mode
    sig = model_signature(model)
    snn = convert(model, neuron, fold_batchnorm=True)
    assert_unchanged(model, sig)
    # The SNN owns its own copies: changing the SNN leaves the ANN alone and vice versa.
    with torch.no_grad():
        next(snn.parameters()).add_(1.0)
    assert_unchanged(model, sig)
    assert not any(p1 is p2 for p1 in snn.parameters() for p2 in model.parameters())


# --------------------------------------------------------------------------- untraceable models


class Gate(nn.Module):
    """A submodule with data-dependent control flow (breaks torch.fx)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.fc(x))
        if y.sum() >= 0:  # always true for a non-negative activation
            return y
        return -y


class Untraceable(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc0 = nn.Linear(4, 6)
        self.q = QCFS(4, 1.5)
        self.gate = Gate(act)
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.gate(self.q(self.fc0(x))))


def test_untraceable_model_is_reported_not_traceable_and_refused_by_name():
    """A model whose graph cannot be captured is never "supported": a module walk would
    miss functional ops inside forward and could keep an ANN nonlinearity silently."""
    model = Untraceable(nn.ReLU()).eval()
    sig = model_signature(model)
    report = check(model)
    assert not report.traced and not report.ok
    assert "not traceable" in report.notes[0] and "'gate'" in report.notes[0]
    assert str(report).endswith("not traceable")
    # The leaf modules are still listed, so the user sees what else would need work.
    assert [o.name for o in report.ops] == ["fc0", "q", "gate.fc", "gate.act", "out"]
    with pytest.raises(ConversionError, match=r"cannot convert: not traceable.*'gate'"):
        convert(model, calibration=torch.randn(100, 4))
    assert_unchanged(model, sig)


def test_untraceable_model_with_unsupported_leaf_lists_it():
    report = check(Untraceable(nn.GELU()))
    assert [o.name for o in report.unsupported] == ["gate.act"]
    with pytest.raises(ConversionError, match="not traceable"):
        convert(Untraceable(nn.GELU()))


# --------------------------------------------------------------------------- shared modules


class SharedAct(nn.Module):
    """One activation module called at two sites (like torchvision's BasicBlock.relu)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def test_shared_activation_module_gets_one_neuron_per_site():
    torch.manual_seed(4)
    model = SharedAct(QCFS(4, 1.0)).eval()
    snn = convert(model, "gn")
    assert len(snn.layers) == 2 and len(set(snn.layers)) == 2
    n1, n2 = (n for _, n in snn.spiking_layers())
    assert n1 is not n2
    x = torch.randn(64, 4)
    with torch.no_grad():
        assert torch.allclose(run(snn, x, 1), model(x), atol=1e-5)
    # Plain ReLU shared: both sites are calibrated separately.
    relu_model = SharedAct(nn.ReLU()).eval()
    snn = convert(relu_model, calibration=x)
    assert snn.config["calibrated_layers"] == 2
    assert len({id(n) for _, n in snn.spiking_layers()}) == 2


# --------------------------------------------------------------------------- BN folding


def test_fold_bn_is_exact_in_eval():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
        nn.BatchNorm1d(5),
    )
    randomize(model, seed=5)
    sig = model_signature(model)
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = images(8, seed=5)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert_unchanged(model, sig)


def test_fold_bn_on_qcfs_networks_keeps_outputs():
    for model in (make_vgg(4, seed=6), make_resnet(4, seed=6)):
        folded = fold_bn(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        x = images(8, seed=6)
        with torch.no_grad():
            assert torch.allclose(folded(x), model(x), atol=1e-4)


@pytest.mark.parametrize("neuron", ["if", "gn"])
def test_convert_with_folded_bn_equals_unfolded(neuron):
    model = make_vgg(4, seed=7)
    x = images(8, seed=7)
    plain = convert(model, neuron, fold_batchnorm=False)
    folded = convert(model, neuron, fold_batchnorm=True)
    assert plain.config["fold_batchnorm"] is False and folded.config["fold_batchnorm"] is True
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert plain.layers == folded.layers
    for T in (1, 4, 8):
        a, b = run(plain, x, T), run(folded, x, T)
        assert torch.allclose(a, b, atol=1e-4), T


# --------------------------------------------------------------------------- module behaviour


def test_converted_network_moves_with_to_float64():
    model = make_mlp(4, seed=8)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(8))
    snn = convert(model)
    ref = run(snn, x, 8)
    snn64 = snn.to(torch.float64)
    assert snn64 is snn
    assert all(n.threshold.dtype == torch.float64 for _, n in snn.spiking_layers())
    assert all(p.dtype == torch.float64 for p in snn.parameters())
    x_seq = x.double().unsqueeze(0).expand(8, *x.shape)
    assert snn(x_seq).dtype == torch.float64
    out = run(snn, x.double(), 8)
    assert torch.allclose(out.float(), ref, atol=1e-4)
    snn.to("cpu")
    assert all(b.device.type == "cpu" for b in snn.buffers())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_converted_network_runs_on_cuda():
    model = make_vgg(4, seed=9)
    x = images(8, seed=9)
    snn = convert(model, "gn")
    ref = run(snn, x, 4)
    snn = snn.to("cuda")
    assert all(b.device.type == "cuda" for b in snn.buffers())
    out = run(snn, x.cuda(), 4)
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), ref, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(run(snn, x.cuda(), 1).cpu(), model(x), atol=1e-4)


def test_converted_network_under_no_grad_and_inference_mode():
    model = make_resnet(4, seed=10)
    x = images(4, seed=10)
    snn = convert(model)
    x_seq = x.unsqueeze(0).expand(6, *x.shape)
    ref = snn(x_seq).detach()
    snn.reset()
    with torch.no_grad():
        a = snn(x_seq)
    snn.reset()
    with torch.inference_mode():
        b = snn(x_seq)
        c = run(snn, x, 6)
    snn.reset()
    assert torch.equal(a, ref) and torch.equal(b, ref)
    assert torch.allclose(c, ref.mean(0), atol=1e-5)
    # The state was reset by `run`, so a normal call after inference mode works.
    assert torch.equal(snn(x_seq).detach(), ref)


def test_state_dict_round_trip_between_two_conversions():
    a = make_resnet(4, seed=11)
    b = make_resnet(4, seed=12)  # same architecture, other weights, λ and BN stats
    snn_a, snn_b = convert(a), convert(b)
    x = images(6, seed=11)
    assert not torch.allclose(run(snn_a, x, 4), run(snn_b, x, 4))
    snn_b.load_state_dict(snn_a.state_dict())
    for T in (1, 4):
        assert torch.equal(run(snn_b, x, T), run(snn_a, x, T))
    th_a = [float(n.threshold) for _, n in snn_a.spiking_layers()]
    th_b = [float(n.threshold) for _, n in snn_b.spiking_layers()]
    assert th_a == th_b
    # The ANN the network replays (ann_forward) came along too.
    with torch.no_grad():
        assert torch.equal(snn_b.ann_forward(x), snn_a.ann_forward(x))
        assert torch.allclose(snn_b.ann_forward(x), a(x), atol=1e-5)


def test_reset_resets_every_neuron_of_a_converted_network():
    snn = convert(make_vgg(4, seed=13))
    snn(images(2, seed=13).unsqueeze(0))
    assert all(n.v is not None for _, n in snn.spiking_layers())
    ann2snn.reset(snn)
    assert all(n.v is None for _, n in snn.spiking_layers())
    snn(images(2, seed=13).unsqueeze(0))
    assert snn.reset() is snn
    assert all(n.v is None for _, n in snn.spiking_layers())


def test_convert_sets_thresholds_from_lambda_and_rejects_unknown_neuron():
    model = make_vgg(4, seed=14)
    lams = [float(m.threshold.detach()) for m in model.modules() if isinstance(m, QCFS)]
    snn = convert(model)
    assert isinstance(snn, SpikingNetwork) and snn.neuron == "if"
    assert [float(n.threshold) for _, n in snn.spiking_layers()] == lams
    assert all(n.v_init == 0.5 for _, n in snn.spiking_layers())
    with pytest.raises(ValueError, match="unknown neuron"):
        convert(model, "lif")
    with pytest.raises(ValueError, match="time-major"):
        snn(torch.randn(3))


def test_shared_maxpool_gets_one_spiking_pool_per_site():
    class TwoPools(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.a1, self.a2 = QCFS(4, 1.0), QCFS(4, 1.0)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            x = self.pool(self.a1(self.c1(x)))
            x = self.pool(self.a2(self.c2(x)))
            return self.fc(x.flatten(1))

    snn = convert(TwoPools(), "cif")
    pools = [m for m in snn.body.modules() if isinstance(m, ann2snn.LIPool)]
    assert len(pools) == 2 and pools[0] is not pools[1]
    assert run(snn, images(2), 4).shape == (2, 2)
