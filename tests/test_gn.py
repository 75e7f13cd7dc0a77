"""Group neurons (methods.md §4, §6 items 19–23) and whole GN networks at T = 1."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_mlp, make_resnet, make_vgg, randomize
from torch import nn

import ann2snn
from ann2snn import QCFS, GroupNeuron, IFNeuron, convert


def grid(lam: float, lo: float = -1.5, hi: float = 2.5) -> torch.Tensor:
    """Multiples of 1/64 from lo·λ to hi·λ (exactly representable)."""
    return torch.arange(int(lo * lam * 64), int(hi * lam * 64) + 1, dtype=torch.float32) / 64


def random_grid_sequence(T: int, shape: tuple[int, ...], lam: float, seed: int) -> torch.Tensor:
    """Random inputs in [−λ, 2λ] rounded to multiples of 1/64 (sums stay exact)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(T, *shape, generator=gen) * 3 * lam - lam
    return torch.round(x * 64) / 64


# --------------------------------------------------------------------------- item 19


@pytest.mark.parametrize(("lam", "tau"), [(2.0, 4), (1.0, 8), (1.0, 2)])
def test_gn_count_is_number_of_members_reached(lam, tau):
    n = GroupNeuron(lam, tau=tau)
    thresholds = n.member_thresholds()
    assert torch.equal(thresholds, torch.arange(1, tau + 1, dtype=torch.float32) * lam / tau)
    x_seq = random_grid_sequence(30, (200,), lam, seed=tau)
    v = torch.full((200,), lam / (2 * tau))
    seen = set()
    for x in x_seq:
        v_pre = v + x  # membrane after charging, before firing
        out = n.step(x)
        k = (v_pre.unsqueeze(-1) >= thresholds).sum(-1).float()
        # Output per step is kλ/τ, k = number of members whose threshold iλ/τ is reached.
        assert torch.equal(out, k * lam / tau)
        assert torch.equal(n.v, v_pre - k * lam / tau)  # lateral inhibition by the total
        v = n.v.clone()
        seen |= set(k.long().tolist())
    assert seen == set(range(tau + 1))  # every count 0..τ occurred


def test_member_spikes_are_binary_trains_summing_to_the_count():
    lam, tau = 2.0, 4
    n = GroupNeuron(lam, tau=tau)
    for x in random_grid_sequence(10, (3, 17), lam, seed=5):
        out = n.step(x)
        count = out / n.quantum
        trains = n.member_spikes(count)
        assert trains.shape == (tau, 3, 17)
        assert set(trains.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(trains.sum(0), count)
        # Member i fires iff its threshold iλ/τ was reached: the trains are nested.
        assert bool((trains[1:] <= trains[:-1]).all())
        # Each member spike is worth λ/τ: the weighted sum is the neuron's output.
        assert torch.equal((trains * n.quantum).sum(0), out)


# --------------------------------------------------------------------------- item 20


@pytest.mark.parametrize("theta", [1.0, 1.37, 0.2])
def test_gn_with_one_member_is_the_if_neuron(theta):
    gen = torch.Generator().manual_seed(int(theta * 100))
    x_seq = torch.randn(50, 300, generator=gen) * theta
    gn, ifn = GroupNeuron(theta, tau=1), IFNeuron(theta)
    assert float(gn.v0) == float(ifn.v0)
    for x in x_seq:
        assert torch.equal(gn.step(x), ifn.step(x))
        assert torch.equal(gn.v, ifn.v)


# --------------------------------------------------------------------------- item 21


@pytest.mark.parametrize("lam", [1.0, 2.0])
@pytest.mark.parametrize("L", [1, 2, 4, 8])
def test_gn_tau_L_single_step_is_qcfs(lam, L):
    act = QCFS(L, lam)
    n = GroupNeuron.from_activation(act)
    assert n.tau == L and float(n.v0) == lam / (2 * L)
    z = grid(lam)
    assert torch.equal(n.step(z), act(z).detach())


def test_gn_tau_L_single_step_is_qcfs_random_lambda():
    gen = torch.Generator().manual_seed(0)
    act = QCFS(8, 1.37)
    z = torch.randn(20000, generator=gen) * 1.5
    out = GroupNeuron.from_activation(act).step(z)
    assert torch.allclose(out, act(z).detach(), atol=1e-6)


# --------------------------------------------------------------------------- item 22


@pytest.mark.parametrize("lam", [1.0, 2.0])
@pytest.mark.parametrize("tau", [2, 4])
@pytest.mark.parametrize("T", [1, 2, 4, 3])
def test_gn_constant_input_mean_is_qcfs_with_tau_times_T_levels(lam, tau, T):
    z = grid(lam)
    n = GroupNeuron(lam, tau=tau)
    mean = torch.stack([n.step(z) for _ in range(T)]).sum(0) / T
    expected = QCFS(tau * T, lam)(z).detach()
    if T & (T - 1) == 0:  # T a power of two: everything is exact
        assert torch.equal(mean, expected)
    else:
        assert torch.allclose(mean, expected, atol=1e-6)


# --------------------------------------------------------------------------- item 23


@pytest.mark.parametrize(("lam", "tau"), [(2.0, 4), (1.0, 8), (3.0, 3)])
def test_gn_reset_returns_membrane_to_half_member_step(lam, tau):
    n = GroupNeuron(lam, tau=tau)
    assert float(n.v0) == pytest.approx(lam / (2 * tau))
    for x in random_grid_sequence(5, (4, 6), lam, seed=9):
        n.step(x)
    n.reset()
    assert n.v is None
    n.step(torch.zeros(4, 6))
    assert torch.allclose(n.v, torch.full((4, 6), lam / (2 * tau)))
    # One shared membrane: its shape is the input's (no per-member copies to drift apart).
    assert n.v.shape == (4, 6)


def test_gn_validates_tau():
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError):
            GroupNeuron(1.0, tau=bad)


# --------------------------------------------------------------------------- whole networks


def assert_gn_equals_ann(model: nn.Module, x: torch.Tensor, levels: int) -> None:
    snn = convert(model, "gn")
    assert snn.neuron == "gn"
    assert all(isinstance(n, GroupNeuron) and n.tau == levels for _, n in snn.spiking_layers())
    with torch.no_grad():
        ann = model(x)
        out = snn(x.unsqueeze(0))[0]  # T = 1
        assert torch.allclose(out, ann, atol=1e-5 * (1 + float(ann.abs().max())))
        assert torch.allclose(ann2snn.run(snn, x, 1), ann, atol=1e-5 * (1 + float(ann.abs().max())))


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_vgg_style_gn_network_at_T1_equals_qcfs_ann(levels):
    model = make_vgg(levels, seed=levels)
    assert_gn_equals_ann(model, images(16, seed=levels), levels)


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_resnet_style_gn_network_at_T1_equals_qcfs_ann(levels):
    model = make_resnet(levels, seed=levels)
    snn = convert(model, "gn")
    # stem + 2 per block: every post-addition activation became a neuron too.
    assert snn.layers == ["stem.2", "layer1.act1", "layer1.act2", "layer2.act1", "layer2.act2"]
    assert_gn_equals_ann(model, images(16, seed=levels), levels)


def test_mlp_gn_network_at_T1_equals_qcfs_ann_and_tau_option():
    model = make_mlp(4, seed=3)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(3))
    assert_gn_equals_ann(model, x, 4)
    # τ = 2·L at T = 1 is a finer quantizer, no longer the L-level ANN.
    snn = convert(model, "gn", tau=8)
    assert all(n.tau == 8 for _, n in snn.spiking_layers())
    with torch.no_grad():
        assert not torch.allclose(snn(x.unsqueeze(0))[0], model(x), atol=1e-4)


def test_gn_network_constant_input_matches_finer_qcfs_first_layer():
    """Constant input through one converted layer: T steps of τ = L members reproduce
    the QCFS layer with τ·T levels (item 22 inside a network)."""
    lam, L, T = 2.0, 4, 4
    lin = nn.Linear(5, 7)
    with torch.no_grad():
        lin.weight.copy_(torch.round(torch.randn(7, 5) * 64) / 64)
        lin.bias.copy_(torch.round(torch.randn(7) * 64) / 64)
    model = nn.Sequential(lin, QCFS(L, lam)).eval()
    x = torch.round(torch.rand(32, 5) * 16) / 16
    snn = convert(model, "gn")
    rate = ann2snn.run(snn, x, T)
    fine = nn.Sequential(lin, QCFS(L * T, lam)).eval()
    with torch.no_grad():
        assert torch.equal(rate, fine(x))


@pytest.mark.parametrize("name", [pytest.param("vgg16", marks=pytest.mark.slow), "resnet20"])
def test_model_zoo_gn_at_T1_equals_qcfs_ann(name):
    models = pytest.importorskip("ann2snn.models")
    if not hasattr(models, "create_model"):
        pytest.skip("ann2snn.models.create_model not available")
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10, act="qcfs", levels=4)
    randomize(model, seed=7)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    assert_gn_equals_ann(model, x, 4)
