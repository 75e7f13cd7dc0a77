"""NQ (Huang et al., 2024): the noisy activation, σ calibration, conversion and training.

methods.md §6 items 9–12, plus the `train` integration of `nq_epoch_hook`.
"""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import train_tiny
from torch import nn

from ann2snn import QCFS, IFNeuron, NoisyQCFS, convert, load, load_record, simulate
from ann2snn.calibration.noise import calibrate_noise, noisy_layers, nq_epoch_hook, set_noise
from ann2snn.simulation import run
from ann2snn.training import TrainConfig


def _z(n: int = 4096, lam: float = 2.0, levels: int = 4, seed: int = 0) -> torch.Tensor:
    """Pre-activations below 0, inside [0, λ], above λ, and exactly on the rounding ties."""
    g = torch.Generator().manual_seed(seed)
    ties = torch.arange(-2, 2 * levels + 3) * lam / (2 * levels)  # multiples of λ/(2L)
    return torch.cat([ties, (torch.rand(n, generator=g) * 1.6 - 0.3) * lam])


def _pair(lam: float = 2.0, levels: int = 4, sigma: float = 0.0) -> tuple[NoisyQCFS, QCFS]:
    return NoisyQCFS(levels, init_threshold=lam, sigma=sigma), QCFS(levels, init_threshold=lam)


# ----------------------------------------------------------------------------- item 9


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lam, levels", [(2.0, 4), (1.0, 8), (8.0, 2)])
def test_zero_sigma_is_qcfs_bit_for_bit(training, lam, levels):
    nq, q = _pair(lam, levels, sigma=0.0)
    nq.train(training), q.train(training)
    assert torch.equal(nq.log_threshold, q.log_threshold)
    z1 = _z(lam=lam, levels=levels).requires_grad_()
    z2 = z1.detach().clone().requires_grad_()
    a, b = nq(z1), q(z2)
    assert torch.equal(a, b)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert torch.equal(z1.grad, z2.grad)
    assert torch.equal(nq.log_threshold.grad, q.log_threshold.grad)


def test_sigma_is_a_buffer_and_must_be_non_negative():
    nq = NoisyQCFS(4, sigma=0.25)
    assert "sigma" in dict(nq.named_buffers()) and "sigma" in nq.state_dict()
    assert "sigma" not in dict(nq.named_parameters())
    assert float(nq.sigma) == 0.25
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        NoisyQCFS(4, sigma=-0.1)


# ----------------------------------------------------------------------------- item 10


def test_training_noise_is_zero_mean_with_std_sigma():
    lam, levels, sigma, n = 2.0, 4, 0.3, 400_000
    nq, q = _pair(lam, levels, sigma)
    nq.train()
    z = torch.rand(n) * 1.4 * lam - 0.2 * lam
    with torch.no_grad():
        diff = (nq(z) - q(z)).double()
    # Sample mean ~ N(0, σ²/n), sample std ~ N(σ, σ²/(2n)): 6 standard errors.
    assert abs(float(diff.mean())) < 6 * sigma / math.sqrt(n)
    assert abs(float(diff.std()) - sigma) < 6 * sigma / math.sqrt(2 * n)
    # Per element and fresh per call: two calls differ, the noise is not a shared offset.
    with torch.no_grad():
        assert not torch.equal(nq(z), nq(z))
    assert float(diff.abs().min()) < 1e-3 < float(diff.abs().max())


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_training_noise_keeps_the_layout_and_its_statistics(layout):
    """4-D activations in channels_last (the CPU training default) or non-dense strides:
    the noise has the activation's layout, std σ, and differs between elements."""
    lam, levels, sigma = 2.0, 4, 0.3
    nq, q = _pair(lam, levels, sigma)
    nq.train()
    z = torch.rand(64, 8, 20, 20) * lam
    z = (
        z.contiguous(memory_format=torch.channels_last)
        if layout == "channels_last"
        else z[..., ::2]
    )
    with torch.no_grad():
        out = nq(z)
        diff = (out - q(z)).double()
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    n = diff.numel()
    assert abs(float(diff.mean())) < 6 * sigma / math.sqrt(n)
    assert abs(float(diff.std()) - sigma) < 6 * sigma / math.sqrt(2 * n)
    assert diff.flatten().unique().numel() > 0.99 * n  # a fresh draw per element


def test_noise_adds_no_gradient_term():
    lam, levels = 2.0, 4
    z0 = _z(lam=lam, levels=levels)
    w = torch.randn_like(z0)

    def grads(module: nn.Module, seed: int):
        torch.manual_seed(seed)
        z = z0.clone().requires_grad_()
        out = module(z)
        (out * w).sum().backward()
        g = (z.grad.clone(), module.log_threshold.grad.clone())
        module.zero_grad()
        return out.detach(), g

    nq, q = _pair(lam, levels, sigma=0.5)
    nq.train(), q.train()
    out_a, (gz_a, gl_a) = grads(nq, 1)
    out_b, (gz_b, gl_b) = grads(nq, 2)
    _, (gz_q, gl_q) = grads(q, 1)
    assert not torch.equal(out_a, out_b)  # the noise differs between the seeds ...
    assert torch.equal(gz_a, gz_q) and torch.equal(gz_b, gz_q)  # ... the gradients do not
    assert torch.equal(gl_a, gl_q) and torch.equal(gl_b, gl_q)
    # Clamp-first STE: dh/dz = 1 inside (0, λ), 0 outside [0, λ] (the two boundary
    # points follow torch.clamp's convention and are left out).
    inside, outside = (z0 > 0) & (z0 < lam), (z0 < 0) | (z0 > lam)
    assert torch.equal(gz_q[inside], w[inside])
    assert torch.equal(gz_q[outside], torch.zeros_like(w[outside]))


def test_eval_mode_is_deterministic_and_equals_qcfs():
    nq, q = _pair(2.0, 4, sigma=0.7)
    nq.eval()
    z = _z()
    a = nq(z)
    assert torch.equal(a, nq(z))
    assert torch.equal(a, q(z))


# ----------------------------------------------------------------------------- item 11


def _identity_layer_net(lam: float = 1.0, levels: int = 4, width: int = 8) -> nn.Sequential:
    """Linear (identity, no bias) → NoisyQCFS → Linear: the activation sees the input itself,
    so with exactly representable inputs the IF layer at T = L is exact."""
    torch.manual_seed(3)
    first = nn.Linear(width, width, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.eye(width))
    return nn.Sequential(first, NoisyQCFS(levels, init_threshold=lam), nn.Linear(width, 3))


def _grid_batches(model: nn.Module, batches: int = 2, batch: int = 32, width: int = 8):
    """Inputs k/64 for integers k in [-80, 112] (below 0, inside and above λ = 1), labelled
    with the ANN's own prediction."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(batches):
        x = torch.randint(-80, 113, (batch, width), generator=g).float() / 64
        with torch.no_grad():
            y = model.eval()(x).argmax(-1)
        out.append((x, y))
    return out


def test_sigma_is_exactly_zero_where_the_snn_is_exact():
    model = _identity_layer_net(lam=1.0, levels=4)
    data = _grid_batches(model)
    model.train()
    cal = calibrate_noise(model, data, steps=4)  # T_n = L: one IF layer is exact
    assert cal.sigma == {"1": 0.0}
    assert isinstance(cal.sigma["1"], float)
    assert float(model[1].sigma) == 0.0
    assert cal.snn_accuracy == 1.0  # the SNN reproduces the ANN's predictions
    assert cal.images == 64 and cal.steps == 4
    assert model.training  # mode restored


def _two_layer_net(sigmas=(0.0, 0.0)) -> nn.Sequential:
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Linear(6, 16),
        NoisyQCFS(4, init_threshold=1.5, sigma=sigmas[0]),
        nn.Linear(16, 12),
        NoisyQCFS(4, init_threshold=1.0, sigma=sigmas[1]),
        nn.Linear(12, 3),
    )
    return model


def _reference_sigma(model: nn.Sequential, batches, steps: int) -> dict[str, float]:
    """Independent estimate: simulate both IF layers by hand, σ_l = sqrt(mean_b var(q − r))."""
    l1, a1, l2, a2 = model[0], model[1], model[2], model[3]
    var = {"1": [], "3": []}
    with torch.no_grad():
        for x, _ in batches:
            q1 = a1.quantize(l1(x))
            q2 = a2.quantize(l2(q1))
            lam1, lam2 = float(a1.threshold), float(a2.threshold)
            z1 = l1(x)
            v1 = torch.full_like(z1, lam1 / 2)
            v2 = torch.full((x.shape[0], 12), lam2 / 2)
            r1, r2 = torch.zeros_like(v1), torch.zeros_like(v2)
            for _ in range(steps):
                v1 = v1 + z1
                s1 = (v1 >= lam1).float() * lam1
                v1 = v1 - s1
                v2 = v2 + l2(s1)
                s2 = (v2 >= lam2).float() * lam2
                v2 = v2 - s2
                r1, r2 = r1 + s1, r2 + s2
            var["1"].append(float((q1 - r1 / steps).var()))
            var["3"].append(float((q2 - r2 / steps).var()))
    return {k: math.sqrt(sum(v) / len(v)) for k, v in var.items()}


def test_sigma_estimate_where_the_snn_is_not_exact():
    model = _two_layer_net(sigmas=(0.123, 0.456))
    x = torch.randn(3, 40, 6, generator=torch.Generator().manual_seed(5))
    batches = [(xb, torch.zeros(40, dtype=torch.long)) for xb in x]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    cal = calibrate_noise(model, batches, steps=2, apply=False)  # T_n = 2 ≠ L = 4
    assert set(cal.sigma) == set(noisy_layers(model)) == {"1", "3"}
    assert all(isinstance(v, float) and v > 0 for v in cal.sigma.values())
    ref = _reference_sigma(model, batches, steps=2)
    for name in ref:
        assert cal.sigma[name] == pytest.approx(ref[name], rel=1e-5), name
    # apply=False: nothing written; the existing σ (noise on in train mode) did not
    # leak into the estimate (the same estimate again).
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    assert calibrate_noise(model, batches, steps=2, apply=False).sigma == cal.sigma

    # apply=True: written into the NoisyQCFS buffers, nothing else changes.
    cal2 = calibrate_noise(model, batches, steps=2)
    assert cal2.sigma == cal.sigma
    for name, layer in noisy_layers(model).items():
        assert float(layer.sigma) == pytest.approx(cal.sigma[name], rel=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("sigma"))


def test_calibration_limits_batches_and_rejects_empty_data():
    model = _two_layer_net()
    x = torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(1))
    batches = [(xb, torch.zeros(10, dtype=torch.long)) for xb in x]
    cal = calibrate_noise(model, batches, steps=2, max_batches=1, apply=False)
    assert cal.images == 10
    assert cal.sigma == pytest.approx(_reference_sigma(model, batches[:1], steps=2), rel=1e-5)
    with pytest.raises(ValueError, match="no batches"):
        calibrate_noise(model, [], steps=2)
    assert model.training  # the mode is restored on errors too


def test_set_noise_writes_by_name_and_rejects_unknown_layers():
    model = _two_layer_net()
    set_noise(model, {"3": 0.25})
    assert float(model[3].sigma) == 0.25 and float(model[1].sigma) == 0.0
    with pytest.raises(KeyError, match="no NoisyQCFS layer named"):
        set_noise(model, {"2": 0.1})


# ----------------------------------------------------------------------------- item 12


def test_converted_nq_network_is_the_plain_qcfs_if_network():
    nq_model = _two_layer_net(sigmas=(0.3, 0.2)).train()  # noise on in the source
    q_model = nn.Sequential(
        nn.Linear(6, 16),
        QCFS(4, init_threshold=1.5),
        nn.Linear(16, 12),
        QCFS(4, init_threshold=1.0),
        nn.Linear(12, 3),
    )
    state = {k: v for k, v in nq_model.state_dict().items() if not k.endswith("sigma")}
    q_model.load_state_dict(state, strict=True)

    snn_nq, snn_q = convert(nq_model), convert(q_model)
    assert nq_model.training  # convert leaves the source alone
    layers = list(snn_nq.spiking_layers())
    assert [n for n, _ in layers] == ["1", "3"]
    for (_, neuron), act in zip(layers, (nq_model[1], nq_model[3])):
        assert type(neuron) is IFNeuron
        lam = float(act.threshold.detach())
        assert float(neuron.threshold) == pytest.approx(lam)
        assert neuron.v_init == 0.5 and float(neuron.v0) == pytest.approx(lam / 2)
        # The copy of the activation it keeps for ANN-mode diagnostics never adds noise.
        assert not neuron.ann_activation.training

    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    out_nq = run(snn_nq, x, T=8)
    assert torch.equal(out_nq, run(snn_q, x, T=8))
    assert torch.equal(out_nq, run(snn_nq, x, T=8))  # no noise: repeatable
    assert torch.equal(snn_nq.ann_forward(x), q_model.eval()(x))


# ----------------------------------------------------------------------------- training


def test_nq_training_calibrates_sigma_each_epoch_and_selects_on_snn_accuracy(tmp_path, one_thread):
    # L = 8 and T_n = 4: the single IF layer is not exact at T_n, so σ > 0 (with L = T_n
    # it would be exact and σ = 0, as in test_sigma_is_exactly_zero_where_the_snn_is_exact).
    cfg = TrainConfig(model="tiny", dataset="synthetic", act="nq", levels=8, epochs=2,
                      batch_size=16, lr=0.05, device="cpu", out_dir=str(tmp_path / "run"),
                      progress=False)  # fmt: skip
    inner = nq_epoch_hook(steps=4)
    log: list[dict] = []
    seen_in_training: list[tuple[int, float]] = []

    def on_epoch_end(model, epoch, loaders, record):
        (name, layer), *rest = noisy_layers(model).items()
        assert not rest
        before = float(layer.sigma)
        out = inner(model, epoch, loaders, record)
        # The SNN validation accuracy at T_n = 4, measured independently.
        snn_acc = simulate(convert(model), loaders.val, 4, progress=False).accuracy[-1]
        log.append(dict(epoch=epoch, before=before, after=float(layer.sigma), out=out,
                        snn_acc=snn_acc, val_acc=record["metrics"]["val_acc"]))  # fmt: skip
        if epoch == 1:  # watch the σ that epoch 2's training forward passes use
            layer.register_forward_hook(
                lambda m, i, o: seen_in_training.append((m.training, float(m.sigma)))
            )
        return out

    record = train_tiny(cfg, hooks={"on_epoch_end": on_epoch_end})

    assert [e["epoch"] for e in log] == [1, 2]
    assert log[0]["before"] == 0.0  # epoch 1 trained with σ = 0 (plain QCFS)
    for e in log:
        assert set(e["out"]["sigma"]) == {"features.2"}
        sigma = e["out"]["sigma"]["features.2"]
        assert sigma > 0 and e["after"] == pytest.approx(sigma, rel=1e-6)
        assert e["out"]["snn_val_acc"] == e["out"]["select_metric"] == e["snn_acc"]
    # Epoch 2 trained with the σ calibrated after epoch 1.
    train_sigmas = {s for training, s in seen_in_training if training}
    assert train_sigmas == {log[0]["after"]}
    assert log[1]["before"] == pytest.approx(log[0]["after"])

    # The record: σ of the last calibration, selection by SNN validation accuracy.
    assert record["extra"]["sigma"] == log[1]["out"]["sigma"]
    assert record["extra"]["snn_val_acc"] == log[1]["snn_acc"]
    history = record["metrics"]["history"]
    assert [h["select_metric"] for h in history] == [e["snn_acc"] for e in log]
    assert [h["val_acc"] for h in history] == [e["val_acc"] for e in log]
    best = 2 if log[1]["snn_acc"] > log[0]["snn_acc"] else 1
    assert record["metrics"]["best_epoch"] == best
    assert record["metrics"]["best_select"] == log[best - 1]["snn_acc"]

    # Checkpoints carry σ in the record and in the weights; load restores the buffers.
    run_dir = tmp_path / "run"
    for tag, epoch in (("last", 2), ("best", best)):
        saved = load_record(run_dir / f"{tag}.json")
        assert saved["epoch"] == epoch
        assert saved["extra"]["sigma"] == pytest.approx(log[epoch - 1]["out"]["sigma"])
        model = load(run_dir / f"{tag}.json")
        layer = noisy_layers(model)["features.2"]
        assert float(layer.sigma) == pytest.approx(saved["extra"]["sigma"]["features.2"])
    assert float(noisy_layers(load(run_dir))["features.2"].sigma) == pytest.approx(
        log[best - 1]["after"]
    )


def test_train_attaches_nq_calibration_itself(tmp_path, one_thread):
    """`train(TrainConfig(act="nq"))` from Python used to train with σ = 0 throughout."""
    cfg = TrainConfig(model="tiny", dataset="synthetic", act="nq", levels=8, epochs=1,
                      batch_size=16, lr=0.05, device="cpu", out_dir=str(tmp_path / "run"),
                      progress=False)  # fmt: skip
    record = train_tiny(cfg)  # no hooks passed
    sigma = record["extra"]["sigma"]
    assert sigma and max(sigma.values()) > 0
    assert record["metrics"]["history"][0]["select_metric"] == record["extra"]["snn_val_acc"]
