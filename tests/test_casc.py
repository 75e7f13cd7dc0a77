"""CASC (methods.md §3, §5, §6 items 13-18): ClipQuant, the consistent IF neuron (CIF),
wake-sleep conversion with LIPool and residual additions, QCFS-trained networks under CIF,
and the wake/sleep `Schedule` of `simulate`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ann2snn import (
    QCFS,
    ClipQuant,
    ConsistentIF,
    IFNeuron,
    LIPool,
    Schedule,
    SpikingNetwork,
    compare,
    convert,
    neurons,
    run,
    simulate,
)
from ann2snn.nn.network import biases_off
from ann2snn.simulation import Phase, run_schedule

# ============================================================================ item 13: ClipQuant


@pytest.mark.parametrize("Q", [1, 4, 8, 16])
def test_clipquant_levels_and_clip_points(Q):
    act = ClipQuant(Q)
    # Exact grid of multiples of 1/256 from -2 to 3, plus random reals.
    z = torch.cat([torch.arange(-512, 769) / 256.0, torch.randn(2000) * 2])
    a = act(z)
    k = a * Q
    assert torch.equal(k, k.round()), "output must be a multiple of 1/Q"
    assert ((k >= 0) & (k <= Q)).all()
    assert (a[z < 1.0 / Q] == 0).all()
    assert (a[z >= 1.0] == 1).all()
    # floor(clip(z, 0, 1)·Q)/Q
    expected = torch.floor(torch.clamp(z, 0, 1) * Q) / Q
    assert torch.equal(a, expected)
    # Exactly at the level boundaries (exact in float): z = k/Q maps to k/Q.
    grid = torch.arange(0, Q + 1) / Q
    assert torch.equal(act(grid), grid)
    # Monotone non-decreasing.
    zs = torch.sort(z).values
    assert (act(zs).diff() >= 0).all()
    assert act.threshold.item() == 1.0 and act.shift == 0.0 and act.levels == Q


def test_clipquant_backward_clips_gradient_and_passes_only_on_0_1():
    act = ClipQuant(8)
    z = torch.tensor([-1.0, -1e-3, 0.0, 0.05, 0.3, 0.5, 0.999, 1.0, 1.001, 2.0] * 3)
    z.requires_grad_(True)
    upstream = torch.tensor(
        [50.0] * 10 + [-37.0] * 10 + [0.25, -0.5, 0.75, -0.125, 0.9, -1.0, 1.0, 0.0, 3.0, -3.0]
    )
    (grad,) = torch.autograd.grad(act(z), z, upstream)
    band = (z.detach() >= 0) & (z.detach() <= 1)
    expected = upstream.clamp(-1, 1) * band
    assert torch.equal(grad, expected)
    # Spot checks: large upstream gradients are clipped to ±1 inside the band ...
    assert grad[2].item() == 1.0 and grad[7].item() == 1.0  # z = 0 and z = 1 pass
    assert grad[14].item() == -1.0  # z = 0.3, upstream -37
    # ... and nothing passes outside [0, 1], however large.
    assert grad[0].item() == 0.0 and grad[8].item() == 0.0 and grad[11].item() == 0.0
    # Small upstream gradients inside the band pass unchanged (straight-through floor).
    assert grad[23].item() == -0.125


def test_clipquant_gradient_through_sum_loss():
    """A plain `.backward()` with a scalar loss scaled up: per-element grad is ±1 or 0."""
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(500, generator=g) * 3 - 1).requires_grad_(True)
    w = torch.randn(500, generator=g) * 100
    (ClipQuant(4)(z) * w).sum().backward()
    band = (z.detach() >= 0) & (z.detach() <= 1)
    assert torch.equal(z.grad, w.clamp(-1, 1) * band)
    assert z.grad.abs().max() <= 1.0


# ============================================================================ items 14-16: CIF


def _run_cif(xs: torch.Tensor, neuron: ConsistentIF, sleep: int) -> torch.Tensor:
    """Feed wake inputs ``xs`` [T, B] then ``sleep`` zero-input sleep steps; return the net
    spike count (sum of emitted values / θ). Asserts methods.md §6 item 15 after every step:
    0 ≤ N ≤ γ·t, |s| ≤ γ, no negative spike when N = 0, t advances in wake only."""
    theta = float(neuron.threshold)
    steps = [(x, False) for x in xs] + [(torch.zeros_like(xs[0]), True)] * sleep
    net = torch.zeros(xs.shape[1:], dtype=torch.float64)
    t_expected = 0
    for x, sleeping in steps:
        neuron.sleeping = sleeping
        n_before = net.clone()
        emitted = neuron.step(x).double() / theta
        s = emitted.round()
        assert torch.allclose(emitted, s, atol=1e-6), "spikes are integer multiples of θ"
        net += s
        t_expected += 0 if sleeping else 1
        assert neuron.wake_steps == t_expected, "t advances in wake only"
        assert (s.abs() <= neuron.gamma).all()
        assert (net >= 0).all() and (net <= neuron.gamma * neuron.wake_steps).all()
        assert not ((n_before == 0) & (s < 0)).any(), "negative spike with N = 0"
        assert torch.equal(neuron.count.double(), net)
    neuron.sleeping = False
    return net


def _dyadic_sequences(T: int, B: int, seed: int, theta16: int = 16) -> torch.Tensor:
    """[T, B] inputs, multiples of 1/16 (exact in fp32), signed, scaled to θ = theta16/16,
    with structured cases: late inputs (everything at the last step), early overshoot then
    retraction, and random."""
    g = torch.Generator().manual_seed(seed)

    def ints(lo: float, hi: float, shape) -> torch.Tensor:
        return torch.randint(int(lo * theta16), int(hi * theta16), shape, generator=g).double()

    xs = ints(-2.5, 3.5, (T, B)) / 16
    q = B // 4
    late = torch.zeros(T, q, dtype=torch.float64)
    late[-1] = ints(-1, T + 2, (q,)) / 16
    xs[:, :q] = late
    # Big positive early, big negative late (must retract spikes).
    early = torch.zeros(T, q, dtype=torch.float64)
    early[: T // 2] = ints(1, 3, (T // 2, q)) / 16
    early[T // 2 :] = -ints(0, 4, (T - T // 2, q)) / 16
    xs[:, q : 2 * q] = early
    return xs


def _floor_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


@pytest.mark.parametrize("T", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("theta16", [16, 12, 24, 8])  # θ = 1, 0.75, 1.5, 0.5
def test_cif_net_count_is_clip_floor_of_total_input(T, theta16):
    """Item 14 (v(0) = 0): N = clip(floor(Z/θ), 0, T) after T wake + T sleep steps."""
    xs = _dyadic_sequences(T, 256, seed=T * 100 + theta16, theta16=theta16)
    theta = theta16 / 16
    n = ConsistentIF(theta, v_init=0.0)
    count = _run_cif(xs.float(), n, sleep=T)
    z16 = (xs * 16).round().long().sum(0)  # exact integer arithmetic for the reference
    expected = _floor_div(z16, theta16).clamp(0, T).double()
    assert torch.equal(count, expected)
    # Not vacuous: the sleep phase was needed for some sequences, both clips are active
    # (negative totals, totals above T·θ) and most levels occur.
    wake_only = _run_cif(xs.float(), ConsistentIF(theta), sleep=0)
    assert (wake_only != expected).any() or T == 1
    assert (z16 < 0).any() and (z16 >= theta16 * (T + 1)).any()
    assert len(set(expected.long().tolist())) >= (T + 1) * 3 // 4


@pytest.mark.parametrize("T", [1, 2, 4, 8])
@pytest.mark.parametrize("theta16", [16, 12, 24, 8])
def test_cif_half_v_init_is_qcfs_rounding(T, theta16):
    """Item 14 with v(0) = θ/2 (QCFS-trained, θ = λ): N = clip(floor(Z/θ + ½), 0, T)."""
    xs = _dyadic_sequences(T, 256, seed=T * 100 + theta16 + 1, theta16=theta16)
    theta = theta16 / 16
    n = ConsistentIF(theta, v_init=0.5)
    count = _run_cif(xs.float(), n, sleep=T)
    z16 = (xs * 16).round().long().sum(0)
    expected = _floor_div(2 * z16 + theta16, 2 * theta16).clamp(0, T).double()
    assert torch.equal(count, expected)


@pytest.mark.parametrize("v_init", [0.0, 0.5])
def test_cif_real_valued_inputs(v_init):
    """Item 14 with arbitrary reals (Gaussian inputs, random θ); elements whose Z/θ lies
    within 1e-4 of a rounding boundary are skipped (fp32 ties), all others must match."""
    g = torch.Generator().manual_seed(7)
    T, B = 8, 4000
    theta = 0.3 + torch.rand((), generator=g).item() * 2
    xs = torch.randn(T, B, generator=g, dtype=torch.float64) * theta * 1.5 + 0.2 * theta
    n = ConsistentIF(theta, v_init=v_init)
    count = _run_cif(xs.float(), n, sleep=T)
    u = xs.float().double().sum(0) / theta + v_init
    expected = torch.floor(u).clamp(0, T)
    clear = (u - u.round()).abs() > 1e-4
    assert clear.float().mean() > 0.99
    assert torch.equal(count[clear], expected[clear])


def test_cif_gamma_2_cap_is_gamma_times_t():
    """γ = 2: up to 2 spikes per step, net count capped at 2·t; limit clip(floor(Z/θ), 0, 2T)."""
    T = 4
    xs = _dyadic_sequences(T, 256, seed=11) * 2
    n = ConsistentIF(1.0, gamma=2)
    count = _run_cif(xs.float(), n, sleep=T)
    z16 = (xs * 16).round().long().sum(0)
    assert torch.equal(count, _floor_div(z16, 16).clamp(0, 2 * T).double())


def test_cif_handcrafted_sequences():
    # Overshoot then retraction: Z = 0 → N = 0.
    assert _run_cif(torch.tensor([[1.0], [-1.0]]), ConsistentIF(1.0), sleep=2).item() == 0
    # Late input: nothing until the last of 4 steps, then 3.5 → N = 3 (IF could give 1).
    xs = torch.tensor([[0.0], [0.0], [0.0], [3.5]])
    assert _run_cif(xs, ConsistentIF(1.0), sleep=4).item() == 3
    # Net count is capped at T even for huge input.
    assert _run_cif(torch.full((3, 1), 100.0), ConsistentIF(1.0), sleep=3).item() == 3
    # Negative total never produces spikes at all.
    assert _run_cif(torch.full((3, 1), -5.0), ConsistentIF(1.0), sleep=3).item() == 0


def test_cif_invariants_random_long_sleep():
    """Item 15 on a long random run with interleaved wake and sleep phases: every step
    0 ≤ N ≤ t, no negative spike at N = 0, t frozen in sleep (asserted in `_run_cif`)."""
    g = torch.Generator().manual_seed(3)
    n = ConsistentIF(1.0)
    total = torch.zeros(512, dtype=torch.float64)
    for _ in range(3):
        xs = torch.randn(5, 512, generator=g) * 2
        # Continue from the previous state (no reset): invariants must still hold.
        theta = float(n.threshold)
        for x in xs:
            n.sleeping = False
            before = n.wake_steps
            total += n.step(x).double() / theta
            assert n.wake_steps == before + 1
        for _ in range(6):
            n.sleeping = True
            before, prev = n.wake_steps, total.clone()
            s = n.step(torch.zeros(512)).double() / theta
            total += s
            assert n.wake_steps == before
            assert not ((prev == 0) & (s < 0)).any()
            assert (total >= 0).all() and (total <= n.wake_steps).all()
    n.sleeping = False
    assert n.wake_steps == 15
    n.reset()
    assert n.wake_steps == 0 and n.count is None and n.v is None and not n.sleeping


def test_cif_without_negative_spikes_fails_item_14():
    """Item 16 (negative control): negative spikes disabled → item 14 fails for some
    sequences, found deterministically; the same sequences pass with negative spikes."""
    T = 8
    xs = _dyadic_sequences(T, 512, seed=5)
    z16 = (xs * 16).round().long().sum(0)
    expected = _floor_div(z16, 16).clamp(0, T).double()

    no_neg = ConsistentIF(1.0, negative_spikes=False)
    count_no_neg = _run_cif(xs.float(), no_neg, sleep=4 * T)
    failures = count_no_neg != expected
    assert failures.sum() >= 1
    # It only ever over-counts (it cannot take spikes back).
    assert (count_no_neg[failures] > expected[failures]).all()
    with_neg = _run_cif(xs.float(), ConsistentIF(1.0), sleep=T)
    assert torch.equal(with_neg, expected)
    # The textbook failure: fire at step 1, then input −1 cancels it; Z = 0 but N = 1.
    simple = _run_cif(
        torch.tensor([[1.0], [-1.0]]), ConsistentIF(1.0, negative_spikes=False), sleep=10
    )
    assert simple.item() == 1


def test_plain_if_misses_late_input():
    """Why CIF exists: an IF neuron (v(0) = 0) cannot emit late input within T steps."""
    xs = torch.tensor([[0.0], [0.0], [0.0], [3.5]])
    n = IFNeuron(1.0, v_init=0.0)
    assert sum(n.step(x).item() for x in xs) == 1.0


# ============================================================================ networks (item 17)


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(1.0, 3.0, generator=g)
                m.bias.uniform_(0.0, 0.5, generator=g)
    return model.eval()


def _mlp(act, depth=4, width=24) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(10, width), nn.BatchNorm1d(width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), act()]
    layers.append(nn.Linear(width, 5))
    return nn.Sequential(*layers)


def _cnn(act) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    )


def _maxpool_cnn(act) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 5),
    )


class _Block(nn.Module):
    """BasicBlock: conv-bn-act-conv-bn, + shortcut, act after the addition."""

    def __init__(self, cin: int, cout: int, stride: int, act):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act2 = act()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _Block(8, 8, 1, act)
        self.layer2 = _Block(8, 12, 2, act)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.pool(self.stem(x)))))


def _qcfs_factory(levels: int, seed: int):
    g = torch.Generator().manual_seed(seed)

    def make():
        return QCFS(levels, init_threshold=0.5 + 1.5 * torch.rand((), generator=g).item())

    return make


def _tol(ref: torch.Tensor) -> float:
    return 1e-5 * (1 + ref.abs().max().item())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


Q = 4
ENOUGH_SLEEP = 24

CASES = {
    "mlp": (lambda: _mlp(lambda: ClipQuant(Q)), (16, 10)),
    "cnn": (lambda: _cnn(lambda: ClipQuant(Q)), (8, 3, 8, 8)),
    "maxpool": (lambda: _maxpool_cnn(lambda: ClipQuant(Q)), (8, 3, 8, 8)),
    "resnet": (lambda: _ResNet(lambda: ClipQuant(Q)), (8, 3, 8, 8)),
    "qcfs-mlp": (lambda: _mlp(_qcfs_factory(Q, 1)), (16, 10)),
    "qcfs-resnet": (lambda: _ResNet(_qcfs_factory(Q, 2)), (8, 3, 8, 8)),
}


def _case(name: str, seed: int = 0):
    build, shape = CASES[name]
    torch.manual_seed(seed)
    model = _randomize_bn(build(), seed + 1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        ann = model(x)
    return model, x, ann


@pytest.mark.parametrize("name", list(CASES))
def test_wake_sleep_network_equals_ann(name):
    """Item 17 + issue extras: θ = λ (1 for ClipQuant), v(0) = shift·θ, T = Q, biases zeroed
    during sleep, enough sleep → accumulated output / T == ANN output (float tolerance);
    with no sleep it does not."""
    model, x, ann = _case(name)
    snn = convert(model, neuron="cif")
    assert snn.config["fold_batchnorm"] is True
    cifs = [n for _, n in neurons(snn)]
    assert cifs and all(isinstance(n, ConsistentIF) for n in cifs)
    if name.startswith("qcfs"):
        # QCFS-trained: θ = λ and v(0) = λ/2.
        acts = [m for m in model.modules() if isinstance(m, QCFS)]
        assert len(acts) == len(cifs)
        for a, n in zip(acts, cifs):
            assert n.v_init == 0.5
            assert torch.allclose(n.threshold, a.threshold.detach())
    else:
        assert all(n.v_init == 0.0 and float(n.threshold) == 1.0 for n in cifs)
    if name in ("maxpool", "resnet", "qcfs-resnet"):
        assert any(isinstance(m, LIPool) for m in snn.modules())

    out = run(snn, x, T=Q, sleep=ENOUGH_SLEEP)
    assert _max_diff(out, ann) <= _tol(ann), name
    # Negative control: no sleep at all is a real, visible difference.
    short = run(snn, x, T=Q, sleep=0)
    assert _max_diff(short, ann) > 1e-3, name
    if name.startswith("qcfs"):
        # The ½ shift matters: v(0) = 0 under a QCFS ANN is biased even with full sleep.
        unshifted = convert(model, neuron="cif", v_init=0.0)
        assert _max_diff(run(unshifted, x, T=Q, sleep=ENOUGH_SLEEP), ann) > 1e-3, name


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_one_sleep_step_is_not_enough(name):
    """Too little sleep (S = 1) leaves residual error; enough sleep removes it."""
    model, x, ann = _case(name)
    snn = convert(model, neuron="cif")
    diffs = {s: _max_diff(run(snn, x, T=Q, sleep=s), ann) for s in (1, ENOUGH_SLEEP)}
    assert diffs[1] > 1e-3
    assert diffs[ENOUGH_SLEEP] <= _tol(ann)


def test_wake_sleep_every_layer_equals_ann():
    """Layer by layer (compare): each CIF layer's rate over T equals its ANN activation."""
    model, x, _ = _case("resnet")
    snn = convert(model, neuron="cif")
    diffs = compare(model, snn, x, T=Q, sleep=ENOUGH_SLEEP)
    assert len(diffs) == len(snn.layers) + 1
    for d in diffs:
        assert d.max_abs < 1e-4, str(d)
    short = compare(model, snn, x, T=Q, sleep=0)
    assert max(d.max_abs for d in short) > 1e-3


def test_larger_q_and_deeper_mlp():
    """T = Q = 8, depth 6: still exact after enough sleep (corrections cross all layers)."""
    torch.manual_seed(3)
    model = _randomize_bn(_mlp(lambda: ClipQuant(8), depth=6), 4)
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ann = model(x)
    snn = convert(model, neuron="cif")
    assert _max_diff(run(snn, x, T=8, sleep=48), ann) <= _tol(ann)
    assert _max_diff(run(snn, x, T=8, sleep=1), ann) > 1e-3


def test_run_is_chunk_invariant_and_resets():
    """Folding steps in chunks (max_fold) gives the same result; run resets state."""
    model, x, ann = _case("maxpool")
    snn = convert(model, neuron="cif")
    a = run(snn, x, T=Q, sleep=ENOUGH_SLEEP)
    b = run(snn, x, T=Q, sleep=ENOUGH_SLEEP, max_fold=x.shape[0])  # one step per call
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert all(n.v is None and n.wake_steps == 0 for _, n in neurons(snn))


# ============================================================================ item 18: biases


def _manual_wake_sleep(snn: SpikingNetwork, x: torch.Tensor, T: int, S: int, zero_biases: bool):
    """Wake T steps, then S zero-input steps with the neurons' `sleeping` flag set by hand
    (not `snn.sleeping()`); biases zeroed only if asked. Returns accumulated output / T."""
    snn.reset()
    with torch.no_grad():
        total = snn(x.unsqueeze(0).expand(T, *x.shape)).sum(0)
        cifs = [n for _, n in neurons(snn)]
        for n in cifs:
            n.sleeping = True
        try:
            zeros = torch.zeros(S, *x.shape)
            if zero_biases:
                with biases_off(snn.body):
                    total = total + snn(zeros).sum(0)
            else:
                total = total + snn(zeros).sum(0)
        finally:
            for n in cifs:
                n.sleeping = False
    snn.reset()
    return total / T


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_biases_on_during_sleep_overcounts(name):
    """Item 18: sleeping with biases left on differs from the ANN (bias over-counted);
    the same hand-built schedule with biases zeroed matches it (positive control)."""
    model, x, ann = _case(name)
    snn = convert(model, neuron="cif")
    zeroed = _manual_wake_sleep(snn, x, Q, ENOUGH_SLEEP, zero_biases=True)
    assert _max_diff(zeroed, ann) <= _tol(ann)
    torch.testing.assert_close(zeroed, run(snn, x, T=Q, sleep=ENOUGH_SLEEP), rtol=0, atol=1e-6)
    biased = _manual_wake_sleep(snn, x, Q, ENOUGH_SLEEP, zero_biases=False)
    assert _max_diff(biased, ann) > 0.1


def test_sleeping_context_zeroes_biases_and_restores():
    model, x, _ = _case("resnet")
    snn = convert(model, neuron="cif", fold_batchnorm=False)  # BN kept: its shift must go too
    params = {k: v.clone() for k, v in snn.state_dict().items()}
    biased = [
        m
        for m in snn.modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d) and m.bias is not None
    ]
    assert any(isinstance(m, nn.BatchNorm2d) for m in biased)
    with pytest.raises(RuntimeError, match="boom"), snn.sleeping():
        assert all(n.sleeping for _, n in neurons(snn))
        for m in biased:
            assert (m.bias == 0).all()
            if isinstance(m, nn.BatchNorm2d):
                assert (m.running_mean == 0).all()
        raise RuntimeError("boom")
    assert not any(n.sleeping for _, n in neurons(snn))
    for k, v in snn.state_dict().items():
        assert torch.equal(v, params[k]), k
    # Unfolded BN still converts exactly (biases_off also zeroes BN's mean and shift).
    with torch.no_grad():
        ann = model(x)
    assert _max_diff(run(snn, x, T=Q, sleep=ENOUGH_SLEEP), ann) <= _tol(ann)


# ============================================================================ Schedule/simulate


def test_schedule_phases():
    assert Schedule(8).phases() == [Phase("wake", 8)]
    assert Schedule(8, sleep=0).phases() == [Phase("wake", 8)]
    assert Schedule(8, 56).phases() == [Phase("wake", 8), Phase("sleep", 56)]
    assert Schedule(8, 4, margin=4).phases() == [
        Phase("wake", 4),
        Phase("sleep", 4),
        Phase("wake", 4),
        Phase("sleep", 4),
    ]
    # A margin that does not divide T: the last wake phase is shorter.
    assert Schedule(5, 2, margin=2).phases() == [
        Phase("wake", 2),
        Phase("sleep", 2),
        Phase("wake", 2),
        Phase("sleep", 2),
        Phase("wake", 1),
        Phase("sleep", 2),
    ]
    assert Schedule(8, 56).total_steps == 64
    assert Schedule(8, 4, margin=4).total_steps == 16
    wake, total = Schedule(8, 4, margin=4).step_index()
    assert wake == [1, 2, 3, 4, 4, 4, 4, 4, 5, 6, 7, 8, 8, 8, 8, 8]
    assert total == list(range(1, 17))
    for bad in (dict(wake=0), dict(wake=4, sleep=-1), dict(wake=4, sleep=1, margin=0)):
        with pytest.raises(ValueError):
            Schedule(**bad)


def _steps_of(schedule: Schedule) -> list[str]:
    return [p.kind for p in schedule.phases() for _ in range(p.steps)]


def _fresh_prefix_sum(snn: SpikingNetwork, x: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """Reset, then run exactly the steps ``kinds`` one by one; return the output sum."""
    snn.reset()
    total = torch.zeros(())
    with torch.no_grad():
        for kind in kinds:
            if kind == "wake":
                total = total + snn.step(x)
            else:
                with snn.sleeping():
                    total = total + snn.step(torch.zeros_like(x))
    snn.reset()
    return total


@pytest.mark.parametrize("sched", [(4, 0, None), (4, 6, None), (4, 3, 2)])
def test_schedule_is_causal_including_sleep(sched):
    """One run of the whole schedule; its running sum after each step equals a fresh run
    truncated at that step (wake and sleep steps alike)."""
    model, x, _ = _case("maxpool")
    snn = convert(model, neuron="cif")
    schedule = Schedule(*sched)
    snn.reset()
    with torch.no_grad():
        outs = torch.cat(list(run_schedule(snn, x, schedule, max_fold=3 * x.shape[0])))
    snn.reset()
    kinds = _steps_of(schedule)
    assert outs.shape[0] == len(kinds) == schedule.total_steps
    running = outs.cumsum(0)
    for k in range(1, len(kinds) + 1):
        fresh = _fresh_prefix_sum(snn, x, kinds[:k])
        torch.testing.assert_close(running[k - 1], fresh, rtol=0, atol=1e-5, msg=f"step {k}")


def test_simulate_records_every_wake_and_sleep_step():
    model, x, ann = _case("maxpool")
    y = ann.argmax(1)
    snn = convert(model, neuron="cif")
    schedule = Schedule(Q, 6, margin=2)
    res = simulate(snn, (x, y), T=Q, sleep=6, margin=2, progress=False)
    wake, total = schedule.step_index()
    assert len(res.accuracy) == schedule.total_steps == 2 * (2 + 6)
    assert res.wake_steps == wake and res.total_steps == total
    assert res.wake_steps == [1, 2, 2, 2, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    assert res.images == x.shape[0]
    # accuracy_at(wake) is the record after the sleep phase that follows those wake steps.
    assert res.accuracy_at(2) == res.accuracy[7]
    assert res.accuracy_at(4) == res.accuracy[-1]
    assert res.accuracy_at(1) == res.accuracy[0]
    by_wake = {1: res.accuracy[0], 2: res.accuracy[7], 3: res.accuracy[8], 4: res.accuracy[-1]}
    assert res.by_wake_steps() == by_wake
    with pytest.raises(ValueError):
        res.accuracy_at(5)
    # Labels are the ANN's predictions and the SNN equals the ANN after the final sleep.
    assert res.accuracy[-1] == 1.0

    # The records are argmax of the running sum of the network's outputs after each step.
    snn.reset()
    with torch.no_grad():
        outs = torch.cat(list(run_schedule(snn, x, schedule, max_fold=4096)))
    snn.reset()
    expected = (outs.cumsum(0).argmax(-1) == y).double().mean(1).tolist()
    assert res.accuracy == pytest.approx(expected)

    # Chunking (one step per forward) changes nothing.
    res1 = simulate(snn, (x, y), T=Q, sleep=6, margin=2, progress=False, max_fold=x.shape[0])
    assert res1.accuracy == res.accuracy
    # Plain schedule: T records, wake_steps == total_steps.
    plain = simulate(snn, (x, y), T=Q, progress=False)
    assert len(plain.accuracy) == Q and plain.wake_steps == plain.total_steps == [1, 2, 3, 4]


def test_simulate_over_loader_batches_counts_all_images():
    model, x, ann = _case("mlp")
    y = ann.argmax(1)
    snn = convert(model, neuron="cif")
    loader = [(x[:10], y[:10]), (x[10:], y[10:])]
    res = simulate(snn, loader, T=Q, sleep=ENOUGH_SLEEP, progress=False)
    assert res.images == x.shape[0]
    assert len(res.accuracy) == Q + ENOUGH_SLEEP
    assert res.accuracy_at(Q) == 1.0
