"""Simulation of converted networks: causality, run/simulate/compare, negative control
(methods.md §0 item 6, §6 items 6 and 8)."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_mlp, make_resnet, make_vgg
from torch import nn

from ann2snn import QCFS, LayerDiff, SimulationResult, compare, convert, run, simulate


def labelled(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, the ANN's own predictions): the SNN's accuracy then measures agreement."""
    with torch.no_grad():
        return x, model(x).argmax(-1)


# --------------------------------------------------------------------------- item 6 (causality)


@pytest.mark.parametrize("make", [make_vgg, make_resnet])
def test_one_long_simulation_gives_every_shorter_one(make):
    model = make(4, seed=1)
    x, y = labelled(model, images(24, seed=1))
    snn = convert(model)
    long = simulate(snn, (x, y), 12, progress=False)
    assert isinstance(long, SimulationResult)
    assert len(long.accuracy) == 12 and long.wake_steps == list(range(1, 13))
    assert long.images == 24
    assert all(0.0 <= a <= 1.0 for a in long.accuracy)
    for t in (1, 3, 7, 12):
        short = simulate(snn, (x, y), t, progress=False)
        assert short.accuracy == long.accuracy[:t], t
        assert long.accuracy_at(t) == short.accuracy[-1]
    # Folding fewer steps per forward (chunks of 5 steps) changes nothing.
    chunked = simulate(snn, (x, y), 12, progress=False, max_fold=5 * 24)
    assert chunked.accuracy == long.accuracy
    # A DataLoader of several batches counts every image once.
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    batched = simulate(snn, loader, 12, progress=False)
    assert batched.images == 24
    assert batched.accuracy == pytest.approx(long.accuracy)


@pytest.mark.parametrize("make", [make_vgg, make_resnet])
def test_running_sum_of_long_run_equals_fresh_short_runs(make):
    model = make(4, seed=2)
    x = images(8, seed=2)
    snn = convert(model)
    T_max = 10
    snn.reset()
    with torch.no_grad():
        per_step = snn(x.unsqueeze(0).expand(T_max, *x.shape))  # [T, B, classes]
    snn.reset()
    running_mean = per_step.cumsum(0) / torch.arange(1, T_max + 1).view(-1, 1, 1)
    for t in range(1, T_max + 1):
        assert torch.allclose(run(snn, x, t), running_mean[t - 1], atol=1e-5), t
    # run resets before and after: repeated calls agree exactly.
    assert torch.equal(run(snn, x, 5), run(snn, x, 5))
    # Chunked folding inside run agrees with one fold.
    assert torch.allclose(run(snn, x, T_max, max_fold=3 * 8), run(snn, x, T_max), atol=1e-5)


def test_state_persists_across_calls_until_reset():
    """Feeding a simulation one step at a time equals one call with all steps."""
    model = make_resnet(4, seed=3)
    x = images(4, seed=3)
    snn = convert(model)
    with torch.no_grad():
        whole = snn(x.unsqueeze(0).expand(6, *x.shape))
        snn.reset()
        stepped = torch.stack([snn.step(x) for _ in range(6)])
        snn.reset()
        halves = torch.cat([snn(x.unsqueeze(0).expand(3, *x.shape)) for _ in range(2)])
    snn.reset()
    assert torch.allclose(stepped, whole, atol=1e-5)
    assert torch.allclose(halves, whole, atol=1e-5)


def test_simulate_gn_tau_L_is_exact_from_the_first_step():
    model = make_vgg(4, seed=4)
    x, y = labelled(model, images(32, seed=4))
    snn = convert(model, "gn")
    result = simulate(snn, (x, y), 4, progress=False)
    assert result.accuracy[0] == 1.0  # T = 1 reproduces the ANN, so it agrees everywhere
    assert result.by_wake_steps()[1] == 1.0
    with pytest.raises(ValueError):
        result.accuracy_at(5)


def test_simulate_and_run_reject_non_spiking_networks_and_bad_T():
    model = make_mlp(4, seed=5)
    with pytest.raises(TypeError, match="SpikingNetwork"):
        run(model, torch.randn(2, 6), 4)
    snn = convert(model)
    with pytest.raises(ValueError):
        run(snn, torch.randn(2, 6), 0)


# --------------------------------------------------------------------------- compare


def test_compare_has_one_row_per_layer_and_output():
    model = make_vgg(4, seed=6)
    snn = convert(model)
    x = images(8, seed=6)
    rows = compare(model, snn, x, 4)
    assert all(isinstance(r, LayerDiff) for r in rows)
    assert [r.name for r in rows] == [*snn.layers, "output"]
    assert all(0 <= r.mean_abs <= r.max_abs for r in rows)
    assert str(rows[-1]).startswith("output")


@pytest.mark.parametrize("make", [make_vgg, make_resnet, make_mlp])
def test_compare_gn_tau_L_at_T1_is_zero_everywhere(make):
    model = make(4, seed=7)
    snn = convert(model, "gn")
    x = torch.randn(16, 6) if make is make_mlp else images(16, seed=7)
    rows = compare(model, snn, x, 1)
    assert len(rows) == len(snn.layers) + 1
    for r in rows:
        assert r.max_abs < 1e-4, r


def test_compare_rejects_a_different_ann():
    snn = convert(make_mlp(4, seed=8))
    with pytest.raises(ValueError, match="disagree"):
        compare(make_mlp(4, seed=9), snn, torch.randn(8, 6), 4)


def test_first_layer_if_rate_converges_to_clipped_preactivation():
    """A converted layer's rate approaches clip(z, 0, λ) as T grows (error ≤ λ/T)."""
    torch.manual_seed(10)
    lam = 1.5
    lin = nn.Linear(5, 9)
    model = nn.Sequential(lin, QCFS(4, lam)).eval()
    snn = convert(model)
    x = torch.randn(64, 5)
    with torch.no_grad():
        target = lin(x).clamp(0, lam)
    errors = []
    for T in (1, 4, 16, 64, 256):
        err = float((run(snn, x, T) - target).abs().max())
        assert err <= lam / T + 1e-5, T
        errors.append(err)
    assert errors[-1] < errors[1] < errors[0]


# --------------------------------------------------------------------------- item 8 (negative control)


def test_two_layer_if_network_at_T_equal_L_is_not_exact():
    """Hand-built unevenness: layer 1 spikes early ([1, 0]), layer 2 cannot take back
    the spike its early input caused.

    x = 0.5, λ = 1, L = T = 2. Layer 1: h(0.5) = 0.5; its IF fires at t = 1 only. Layer 2
    gets z = 0.5 − 0.5 = 0 in the ANN (h = 0), but per step +0.5 then −0.5: its membrane
    goes 0.5 → 1.0 (fires, back to 0) → −0.5, so its rate is 0.5 ≠ 0.
    """
    l1, l2, out = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        for lin, w, b in ((l1, 1.0, 0.0), (l2, 1.0, -0.5), (out, 1.0, 0.0)):
            lin.weight.fill_(w)
            lin.bias.fill_(b)
    model = nn.Sequential(l1, QCFS(2, 1.0), l2, QCFS(2, 1.0), out).eval()
    x = torch.tensor([[0.5]])
    snn = convert(model)
    with torch.no_grad():
        assert float(model(x)) == 0.0
        assert float(run(snn, x, 2)) == 0.5
    first, second, output = compare(model, snn, x, 2)
    assert first.max_abs == 0.0  # the first layer sees constant input: exact (item 3)
    assert second.max_abs == 0.5 and output.max_abs == 0.5
    # The same network with group neurons at T = 1 is exact.
    with torch.no_grad():
        assert float(run(convert(model, "gn"), x, 1)) == 0.0


def test_random_multilayer_if_network_at_T_equal_L_is_not_exact():
    L = 4
    model = make_mlp(L, seed=11, sizes=(6, 32, 32, 32, 4))
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(11))
    snn = convert(model)
    rows = compare(model, snn, x, L)
    assert rows[0].max_abs < 1e-5  # first layer: constant input, exact at T = L
    assert max(r.max_abs for r in rows[1:]) > 0.1  # deeper layers: unevenness error
    with torch.no_grad():
        assert not torch.allclose(run(snn, x, L), model(x), atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_simulate_on_cuda_matches_cpu():
    model = make_resnet(4, seed=12)
    x, y = labelled(model, images(32, seed=12))
    snn = convert(model)
    cpu = simulate(snn, (x, y), 8, progress=False)
    gpu = simulate(snn, (x, y), 8, device="cuda", progress=False)
    assert all(b.device.type == "cuda" for b in snn.buffers())
    assert gpu.accuracy == pytest.approx(cpu.accuracy, abs=1 / 32 + 1e-9)
    gn = convert(model, "gn").to("cuda")
    assert simulate(gn, (x, y), 2, progress=False).accuracy[0] == 1.0
    # bf16 layers under autocast; the membranes stay fp32.
    bf16 = simulate(gn, (x, y), 2, progress=False, dtype=torch.bfloat16)
    assert len(bf16.accuracy) == 2 and bf16.accuracy[0] > 0.5
