"""IF neuron against QCFS closed forms (methods.md §1.2, §1.6, §6 items 3–6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn import QCFS, GroupNeuron, IFNeuron, create_neuron, list_neurons


def sweep(lam: float) -> torch.Tensor:
    """z from −1.5λ to 2.5λ in steps of 1/64 (exactly representable)."""
    return torch.arange(int(-1.5 * lam * 64), int(2.5 * lam * 64) + 1, dtype=torch.float32) / 64


def mean_rate(neuron: IFNeuron, z: torch.Tensor, T: int) -> torch.Tensor:
    """Mean emitted value over T steps of constant input z (state reset first)."""
    neuron.reset()
    total = torch.zeros_like(z)
    for _ in range(T):
        total = total + neuron.step(z)
    neuron.reset()
    return total / T


def unif(lam: float, n: int = 4096) -> torch.Tensor:
    """Midpoints of n equal cells of (0, λ): a deterministic stand-in for z ~ U(0, λ)."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n * lam


# --------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("lam", [1.0, 2.0])
@pytest.mark.parametrize("L", [1, 2, 4, 8, 16])
def test_if_at_T_equal_L_is_exactly_qcfs(lam, L):
    act = QCFS(L, lam)
    n = IFNeuron.from_activation(act)
    assert float(n.threshold) == lam and float(n.v0) == lam / 2
    z = sweep(lam)  # includes z < 0 and z > λ
    assert torch.equal(mean_rate(n, z, L), act(z).detach())


def test_if_multi_step_mode_at_T_equal_L_is_exactly_qcfs():
    act = QCFS(4, 2.0)
    n = IFNeuron.from_activation(act, step_mode="m")
    z = sweep(2.0)[:-1].reshape(-1, 2)
    out = n(z.unsqueeze(0).expand(4, *z.shape))  # [T, B, 2]
    assert out.shape == (4, *z.shape)
    assert torch.equal(out.mean(0), act(z).detach())


# --------------------------------------------------------------------------- item 4 (Theorem 2)


@pytest.mark.parametrize("lam", [1.0, 2.0])
@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
def test_theorem2_shifted_if_is_unbiased_for_any_T(lam, T):
    """θ = λ, v(0) = λ/2, z ~ U(0, λ): E[IF rate − h(z)] = 0 although T ≠ L."""
    L = 4
    z = unif(lam)
    h = QCFS(L, lam)(z.float()).double().detach()
    rate = mean_rate(IFNeuron(lam, v_init=0.5), z.float(), T).double()
    assert abs(float((rate - h).mean())) < 1e-3 * lam
    assert float((rate - h).abs().mean()) > 0  # T ≠ L: not exact element-wise, only on average


@pytest.mark.parametrize("lam", [1.0, 2.0])
@pytest.mark.parametrize("T", [2, 3, 8, 16])
def test_unshifted_if_is_biased_when_T_differs_from_L(lam, T):
    """v(0) = 0 against the unshifted floor (φ = 0): both floors lose half a step on
    average, so E[rate − floor_L] = λ/2·(1/L − 1/T) ≠ 0 for T ≠ L."""
    L = 4
    z = unif(lam)
    floor_L = QCFS(L, lam, shift=0.0)(z.float()).double().detach()
    rate = mean_rate(IFNeuron(lam, v_init=0.0), z.float(), T).double()
    bias = float((rate - floor_L).mean())
    assert bias == pytest.approx(lam / 2 * (1 / L - 1 / T), abs=1e-3 * lam)
    assert abs(bias) > 0.04 * lam
    # And against the shifted h(z) the unshifted neuron is off by −λ/(2T).
    h = QCFS(L, lam)(z.float()).double().detach()
    assert float((rate - h).mean()) == pytest.approx(-lam / (2 * T), abs=1e-3 * lam)


def test_theorem1_unshifted_if_is_exact_at_T_equal_L():
    """φ = 0, v(0) = 0, T = L: the rate equals the unshifted clip-floor exactly."""
    lam, L = 2.0, 4
    z = sweep(lam)
    floor_L = QCFS(L, lam, shift=0.0)(z).detach()
    assert torch.equal(mean_rate(IFNeuron(lam, v_init=0.0), z, L), floor_L)


# --------------------------------------------------------------------------- item 5


def test_if_emits_zero_or_theta_and_cumulative_spikes_bounded():
    gen = torch.Generator().manual_seed(0)
    theta = 1.5
    n = IFNeuron(theta)
    x_seq = torch.randn(40, 64, generator=gen) * 2 + 0.5  # arbitrary signs and sizes
    out = n.multi_step(x_seq)
    assert set(out.unique().tolist()) <= {0.0, theta}
    spikes = (out / theta).cumsum(0)
    t = torch.arange(1, 41, dtype=torch.float32).view(-1, 1)
    assert bool((spikes <= t).all())
    assert bool((spikes[-1] > 0).any())


def test_if_membrane_stays_in_zero_theta_for_constant_input_in_range():
    theta = 2.0
    n = IFNeuron(theta)
    z = torch.linspace(0, theta, 257)  # includes both ends
    for _ in range(50):
        n.step(z)
        assert bool((n.v >= 0).all()) and bool((n.v < theta).all())
        assert n.v.dtype == torch.float32


def test_if_fire_condition_is_inclusive():
    n = IFNeuron(1.0, v_init=0.0)
    assert float(n.step(torch.tensor(1.0))) == 1.0  # v = θ fires
    assert float(n.v) == 0.0
    assert float(n.step(torch.tensor(1.0 - 2**-20))) == 0.0


# --------------------------------------------------------------------------- item 6


@pytest.mark.parametrize("theta", [1.0, 2.0, 0.75])
def test_reset_returns_membrane_to_half_threshold(theta):
    n = IFNeuron(theta)
    assert float(n.v0) == theta / 2
    n.step(torch.full((3,), 0.3 * theta))
    n.step(torch.full((3,), 0.9 * theta))
    assert not torch.equal(n.v, torch.full((3,), theta / 2))
    n.reset()
    assert n.v is None
    n.step(torch.zeros(3))  # zero input: no spike, v stays at v(0)
    assert torch.equal(n.v, torch.full((3,), theta / 2))


def test_neuron_is_causal_and_reset_restarts_identically():
    gen = torch.Generator().manual_seed(1)
    x_seq = torch.randn(12, 5, 7, generator=gen)
    n = IFNeuron(0.8)
    full = torch.stack([n.step(x) for x in x_seq])
    n.reset()
    again = torch.stack([n.step(x) for x in x_seq])
    assert torch.equal(full, again)
    for t in (1, 4, 12):  # a fresh run of t steps is the first t steps of the long run
        n.reset()
        assert torch.equal(torch.stack([n.step(x) for x in x_seq[:t]]), full[:t])


def test_reset_function_resets_every_neuron_in_a_module():
    net = nn.Sequential(nn.Linear(3, 4), IFNeuron(1.0), nn.Linear(4, 4), GroupNeuron(1.0, tau=4))
    x = torch.randn(2, 3)
    net(x)
    net(x)
    assert all(m.v is not None for m in net if isinstance(m, IFNeuron | GroupNeuron))
    assert ann2snn.reset(net) is net
    assert all(m.v is None for m in net if isinstance(m, IFNeuron | GroupNeuron))
    assert [name for name, _ in ann2snn.neurons(net)] == ["1", "3"]


# --------------------------------------------------------------------------- modes, dtype


@pytest.mark.parametrize("cls", [IFNeuron, GroupNeuron])
def test_single_step_and_multi_step_forward_agree(cls):
    gen = torch.Generator().manual_seed(2)
    x_seq = torch.randn(9, 4, 3, 5, generator=gen)
    single = cls(1.3, step_mode="s")
    multi = cls(1.3, step_mode="m")
    out_s = torch.stack([single(x) for x in x_seq])
    out_m = multi(x_seq)
    assert out_m.shape == x_seq.shape
    assert torch.equal(out_s, out_m)
    assert torch.equal(single.v, multi.v)
    # multi_step called explicitly on an 's' neuron is the same loop.
    single.reset()
    assert torch.equal(single.multi_step(x_seq), out_m)


@pytest.mark.parametrize("cls", [IFNeuron, GroupNeuron])
def test_membrane_is_fp32_for_bf16_input(cls):
    n = cls(1.0)
    x = torch.full((4,), 2.0**-10, dtype=torch.bfloat16)
    outs = [n.step(x) for _ in range(600)]
    assert n.v.dtype == torch.float32
    assert all(o.dtype == torch.bfloat16 for o in outs)
    # A bf16 membrane could not accumulate 2^-10 on top of v(0) (it would stay put);
    # fp32 does, so the neuron eventually fires.
    assert float(torch.stack(outs).float().sum()) > 0


def test_if_output_values_in_bf16():
    n = IFNeuron(1.0)
    x = torch.tensor([0.25, 0.5, 1.0, 3.0], dtype=torch.bfloat16)
    out = torch.stack([n.step(x) for _ in range(4)])
    assert out.dtype == torch.bfloat16
    assert set(out.float().unique().tolist()) <= {0.0, 1.0}
    assert out.float().mean(0).tolist() == [0.25, 0.5, 1.0, 1.0]


# --------------------------------------------------------------------------- convergence in T


@pytest.mark.parametrize("lam", [1.0, 2.5])
def test_rate_converges_to_clipped_input_within_lambda_over_T(lam):
    """With v(0) = λ/2 the T-step rate is a rounded clip(z, 0, λ): error ≤ λ/(2T) ≤ λ/T."""
    gen = torch.Generator().manual_seed(3)
    z = torch.rand(2000, generator=gen) * 1.6 * lam - 0.3 * lam
    target = z.clamp(0, lam)
    errors = []
    for T in (1, 2, 4, 8, 16, 64, 256):
        err = float((mean_rate(IFNeuron(lam), z, T) - target).abs().max())
        assert err <= lam / (2 * T) + 1e-5 * lam, T
        assert err <= lam / T
        errors.append(err)
    assert errors[-1] < errors[2] < errors[0]


# --------------------------------------------------------------------------- construction


def test_neuron_arguments_are_validated():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            IFNeuron(bad)
    with pytest.raises(ValueError):
        IFNeuron(torch.ones(2))
    with pytest.raises(ValueError):
        IFNeuron(1.0, step_mode="x")
    with pytest.raises(TypeError):
        IFNeuron.from_activation(nn.ReLU())
    with pytest.raises(ValueError, match="unknown neuron"):
        create_neuron("lif", threshold=1.0)


def test_registry_and_from_activation():
    assert {"if", "gn", "cif"} <= set(list_neurons())
    act = QCFS(4, 2.0)
    n = create_neuron("if", act)
    assert isinstance(n, IFNeuron) and float(n.threshold) == 2.0 and n.v_init == 0.5
    n = create_neuron("if", threshold=3.0, v_init=0.0)
    assert float(n.threshold) == 3.0 and float(n.v0) == 0.0
    # The neuron copies λ: later training of the activation does not move θ.
    n = IFNeuron.from_activation(act)
    act.set_threshold(5.0)
    assert float(n.threshold) == 2.0
