"""Post-conversion calibration (`ann2snn.calibrate`): bias and offset methods."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_unchanged, images, make_resnet, make_vgg, model_signature
from torch import nn

import ann2snn
from ann2snn import QCFS, calibrate, convert, run
from ann2snn.calibration.post_conversion import CalibrationLog, layer_gaps

T = 4


def _one_layer(z: torch.Tensor) -> nn.Sequential:
    """x = 1 → Linear (weights 0, bias z_c per channel) → QCFS(L=4, λ=1) → Linear(I):
    channel c sees the constant input z_c at every step."""
    c = z.numel()
    first, last = nn.Linear(1, c), nn.Linear(c, c)
    with torch.no_grad():
        first.weight.zero_()
        first.bias.copy_(z)
        last.weight.copy_(torch.eye(c))
        last.bias.zero_()
    return nn.Sequential(first, QCFS(4, init_threshold=1.0), last).eval()


@pytest.mark.parametrize("method", ["offset", "bias"])
def test_closed_form_offset_is_removed_exactly(method):
    # The SNN starts from v(0) = 0 where the ANN's ½-shift needs θ/2: for constant input
    # z the ANN emits floor(4z + ½)/4 and the SNN floor(4z)/4 after T = 4 steps, one
    # spike short wherever frac(4z) ≥ ½. The gap per channel is known in closed form.
    z = torch.tensor([0.05, 0.15, 0.3, 0.4, 0.55, 0.62, 0.8, 0.9, 1.3, -0.2])
    model = _one_layer(z)
    snn = convert(model, "if", v_init=0.0)
    x = torch.ones(8, 1)
    ann = model(x)
    before = run(snn, x, T=T)
    ann_q = torch.clamp(torch.floor(4 * z + 0.5), 0, 4) / 4
    snn_q = torch.clamp(torch.floor(4 * z), 0, 4) / 4
    assert torch.equal(before[0], snn_q) and torch.equal(ann[0], ann_q)
    assert not torch.equal(before, ann)
    fixed = calibrate(snn, x, T=T, method=method, batches=1, guard=False)
    assert torch.equal(run(fixed, x, T=T), ann)
    assert torch.equal(run(calibrate(snn, x, T=T, method=method, batches=1), x, T=T), ann)
    neuron = dict(fixed.spiking_layers())[fixed.layers[0]]
    if method == "offset":
        # v(0) shifted by exactly T·gap = one θ (=1) where a spike was missing, else 0.
        assert torch.equal(neuron.v_offset, T * (ann_q - snn_q))
    else:
        # The feeding Linear's bias moved by exactly the rate gap.
        assert torch.equal(fixed.body.get_submodule("0").bias, z + (ann_q - snn_q))
    # The input network is untouched.
    assert torch.equal(run(snn, x, T=T), before)
    assert dict(snn.spiking_layers())[snn.layers[0]].v_offset is None


@pytest.mark.parametrize("method", ["offset", "bias"])
@pytest.mark.parametrize("make", [make_vgg, make_resnet])
def test_calibration_reduces_the_layer_gap_and_keeps_the_input(method, make):
    model = make()
    snn = convert(model, "if")
    sig = model_signature(snn)
    data = [(images(16, seed=s), None) for s in range(2)]
    log = CalibrationLog(method, 2)
    fixed = calibrate(snn, data, T=2, method=method, batches=2, log=log)
    assert_unchanged(snn, sig)
    assert log.images == 32 and set(log.layers) == set(snn.layers)
    # Every kept correction lowered the output error on the calibration images.
    for entry in log.layers.values():
        assert entry["kept"] is (entry["output_mse_after"] <= entry["output_mse_before"])
    kept = [name for name, e in log.layers.items() if e["kept"]]
    assert kept
    before = layer_gaps(snn, data, T=2, batches=2)
    after = layer_gaps(fixed, data, T=2, batches=2, reference=snn)
    assert after[kept[0]] < 0.5 * before[kept[0]]
    # Each kept layer lowered the output error, so the whole network's is lower: on the
    # calibration images the output is closer to the ANN's at T = 2.
    x = torch.cat([d[0] for d in data])
    with torch.no_grad():
        ann = model(x)
        err = lambda net: float((run(net, x, T=2) - ann).square().mean())  # noqa: E731
        assert err(fixed) < err(snn)
    assert fixed.config["calibration"] == {"method": method, "T": 2, "images": 32, "per_channel": True}  # fmt: skip


def test_gn_exact_network_is_left_as_it_is():
    model = make_vgg()
    gn = convert(model, "gn", tau=4)
    x = images(16)
    fixed = calibrate(gn, x, T=1, method="offset", batches=1)
    assert torch.equal(run(fixed, x, T=1), run(gn, x, T=1))
    assert all(float(n.v_offset.abs().max()) == 0 for _, n in fixed.spiking_layers())


def test_offset_survives_state_dict_and_reset():
    model = make_vgg()
    fixed = calibrate(
        convert(model, "if"), images(16), T=2, method="offset", batches=1, guard=False
    )
    x = images(8, seed=3)
    first = run(fixed, x, T=2)
    fixed.reset()
    assert torch.equal(run(fixed, x, T=2), first)  # v(0) is re-applied after reset
    assert any(n.v_offset is not None for _, n in fixed.spiking_layers())
    fresh = convert(model, "if")
    fresh.load_state_dict(fixed.state_dict())  # adopts the offsets
    assert torch.equal(run(fresh, x, T=2), first)
    fresh.load_state_dict(convert(model, "if").state_dict())  # and drops them
    assert all(n.v_offset is None for _, n in fresh.spiking_layers())


def test_bad_arguments_are_named():
    snn = convert(make_vgg(), "if")
    with pytest.raises(ValueError, match="method must be one of bias, offset, got 'magic'"):
        calibrate(snn, images(4), T=2, method="magic")
    with pytest.raises(TypeError, match="SpikingNetwork"):
        calibrate(make_vgg(), images(4), T=2)
    with pytest.raises(ValueError, match="T"):
        calibrate(snn, images(4), T=0)
    # A neuron fed by the input directly has no layer to carry a bias.
    bare = convert(nn.Sequential(QCFS(4, init_threshold=1.0), nn.Linear(3, 2)).eval(), "if")
    with pytest.raises(ValueError, match="method 'bias' needs .* use method='offset'"):
        calibrate(bare, torch.rand(4, 3), T=2, method="bias")
    assert calibrate(bare, torch.rand(4, 3), T=2, method="offset") is not bare


def test_relu_network_calibrates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()  # fmt: skip
    data = torch.randn(256, 6)
    snn = convert(model, "if", calibration=data)  # θ = 99.9th percentile, v(0) = 0
    for method in ("bias", "offset"):
        fixed = calibrate(snn, data, T=2, method=method, batches=1, guard=False)
        # The target is the ReLU output clipped to [0, θ]; the first layer's mean gap
        # (which nothing before it disturbs) shrinks; one linearised step cannot remove
        # it all where the rate saturates at 0 or θ.
        first = snn.layers[0]
        before = layer_gaps(snn, data, T=2, batches=1)[first]
        after = layer_gaps(fixed, data, T=2, batches=1, reference=snn)[first]
        assert before > 0.05 and after < 0.75 * before
    assert ann2snn.calibrate is calibrate


def test_offset_rounds_repeat_the_pass_and_bias_refuses_them():
    model = make_resnet()
    snn = convert(model, "if")
    data = [(images(16, seed=s), None) for s in range(2)]
    once = calibrate(snn, data, T=2, method="offset", batches=2, guard=False)
    twice = calibrate(snn, data, T=2, method="offset", batches=2, guard=False, rounds=2)
    again = calibrate(once, data, T=2, method="offset", batches=2, guard=False)
    x = images(8, seed=4)
    assert torch.equal(run(twice, x, T=2), run(again, x, T=2))  # = the pass applied twice
    assert twice.config["calibration"]["after"]["method"] == "offset"
    with pytest.raises(ValueError, match="rounds > 1 needs method='offset'"):
        calibrate(snn, data, T=2, method="bias", rounds=2)
    with pytest.raises(ValueError, match="rounds"):
        calibrate(snn, data, T=2, method="offset", rounds=0)
