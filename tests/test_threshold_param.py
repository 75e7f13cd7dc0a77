"""λ trained raw (as the papers do) or as log λ (`threshold_param`), λ weight decay."""

from __future__ import annotations

import _tiny
import pytest
import torch
from _tiny import train_tiny

import ann2snn
from ann2snn.nn.activations import QCFS, RAW_THRESHOLD_FLOOR, NoisyQCFS, clamp_thresholds_
from ann2snn.training import TrainConfig, param_groups, prepare_training


@pytest.mark.parametrize("cls", [QCFS, NoisyQCFS])
def test_raw_and_log_give_identical_forward_values(cls):
    torch.manual_seed(0)
    z = torch.randn(4, 3, 5, 5) * 3  # [B, C, H, W], across the clip range
    for lam in (0.37, 1.0, 2.5, 8.0):
        log, raw = cls(4, lam), cls(4, lam, threshold_param="raw")
        assert float(log.threshold.detach()) == pytest.approx(
            float(raw.threshold.detach()), rel=1e-6
        )
        log.eval(), raw.eval()
        # exp(log λ) can differ from λ in the last bit; compare at the same fp32 λ.
        raw.set_threshold(log.threshold.detach())
        assert torch.equal(log(z), raw(z))
        assert raw.spike_spec().threshold == log.spike_spec().threshold


def test_raw_gradient_reaches_lambda_unchanged():
    z = torch.linspace(-2, 10, 101)
    log, raw = QCFS(4, 4.0), QCFS(4, 4.0, threshold_param="raw")
    log(z).sum().backward()
    raw(z).sum().backward()
    # d/d(log λ) = λ · d/dλ
    assert float(raw.raw_threshold.grad) == pytest.approx(float(log.log_threshold.grad) / 4.0)
    assert [n for n, _ in raw.named_parameters()] == ["raw_threshold"]


def test_raw_lambda_stays_positive_under_a_large_negative_step():
    model = _tiny.TinyNet(act="qcfs", threshold_param="raw")
    cfg = TrainConfig(model="tiny", dataset="synthetic", lr=1.0, momentum=0.0, device="cpu",
                      threshold_param="raw", amp="off", channels_last=False, compile=False)  # fmt: skip
    setup = prepare_training(model, cfg)
    act = setup.model.features[2]
    x = torch.randn(8, 3, _tiny.IMAGE, _tiny.IMAGE)
    # A loss whose gradient on λ is +1e6: one SGD step with lr 1 moves λ by −1e6.
    loss = 1e6 * act.raw_threshold + 0 * setup.model(x).sum()
    setup.optimizer.zero_grad()
    loss.backward()
    setup.optimizer.step()
    assert float(act.raw_threshold.detach()) == pytest.approx(RAW_THRESHOLD_FLOOR)
    assert float(act.threshold.detach()) > 0
    out = setup.model(x)
    assert torch.isfinite(out).all()
    # Without the projection the parameter would have crossed zero; the forward still
    # reads max(λ, floor), with the gradient passed straight through.
    with torch.no_grad():
        act.raw_threshold.fill_(-3.0)
    assert float(act.threshold.detach()) == pytest.approx(RAW_THRESHOLD_FLOOR)
    act(torch.ones(3)).sum().backward()
    assert act.raw_threshold.grad is not None and torch.isfinite(act.raw_threshold.grad)
    assert clamp_thresholds_(setup.model) == 1
    assert float(act.raw_threshold.detach()) == pytest.approx(RAW_THRESHOLD_FLOOR)


@pytest.mark.parametrize("param", ["log", "raw"])
def test_lambda_weight_decay_applies_only_when_asked(param):
    model = _tiny.TinyNet(act="qcfs", threshold_param=param)
    lam = dict(model.named_parameters())[f"features.2.{param}_threshold"]
    for decay in (False, True):
        groups = param_groups(model, 5e-4, threshold_decay=decay)
        where = [g["weight_decay"] for g in groups if any(p is lam for p in g["params"])]
        assert where == [5e-4 if decay else 0.0]
    # The config's default follows the parametrisation: the papers decay a raw λ.
    cfg = TrainConfig(model="tiny", dataset="d", threshold_param=param)
    assert cfg.decays_thresholds is (param == "raw")
    assert TrainConfig(model="tiny", dataset="d", threshold_param=param,
                       threshold_decay=False).decays_thresholds is False  # fmt: skip
    # With zero gradient, one SGD step changes λ only when λ decays.
    for decay in (False, True):
        m = _tiny.TinyNet(act="qcfs", threshold_param=param)
        p = dict(m.named_parameters())[f"features.2.{param}_threshold"]
        opt = torch.optim.SGD(param_groups(m, 0.1, threshold_decay=decay), lr=1.0)
        before = float(p.detach())
        for q in m.parameters():
            q.grad = torch.zeros_like(q)
        opt.step()
        assert (float(p.detach()) != before) is decay


def test_config_rejects_bad_threshold_settings():
    with pytest.raises(ValueError, match="threshold_param must be one of log, raw"):
        TrainConfig(model="tiny", dataset="d", threshold_param="exp")
    with pytest.raises(ValueError, match="threshold_decay"):
        TrainConfig(model="tiny", dataset="d", threshold_decay="yes")
    with pytest.raises(ValueError, match="threshold_param must be one of"):
        QCFS(4, threshold_param="linear")


def test_raw_run_trains_records_and_reloads(tmp_path):
    cfg = TrainConfig(model="tiny", dataset="synthetic", epochs=2, batch_size=16, lr=0.05,
                      device="cpu", out_dir=str(tmp_path / "run"), progress=False,
                      threshold_param="raw")  # fmt: skip
    record = train_tiny(cfg)
    assert record["recipe"]["threshold_param"] == "raw"
    model = ann2snn.load(tmp_path / "run")
    acts = [m for m in model.modules() if isinstance(m, QCFS)]
    assert acts and all(m.threshold_param == "raw" for m in acts)
    assert all(float(m.threshold.detach()) > 0 for m in acts)
    # The trained λ moved away from its start (it was trained, and decayed).
    assert any(float(m.threshold.detach()) != 8.0 for m in acts)
    snn = ann2snn.convert(model, neuron="gn")
    x = torch.randn(5, 3, _tiny.IMAGE, _tiny.IMAGE)
    model.eval()
    assert torch.allclose(ann2snn.run(snn, x, T=1), model(x), atol=1e-5)
