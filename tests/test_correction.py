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


@pytest.mark.parametrize("method", ["potential", "bias"])
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
    if method == "potential":
        # v(0) shifted by exactly T·gap = one θ (=1) where a spike was missing, else 0.
        assert torch.equal(neuron.v_offset, T * (ann_q - snn_q))
    else:
        # The feeding Linear's bias moved by exactly the rate gap.
        assert torch.equal(fixed.body.get_submodule("0").bias, z + (ann_q - snn_q))
    # The input network is untouched.
    assert torch.equal(run(snn, x, T=T), before)
    assert dict(snn.spiking_layers())[snn.layers[0]].v_offset is None


@pytest.mark.parametrize("method", ["potential", "bias"])
@pytest.mark.parametrize("make", [make_vgg, make_resnet])
def test_calibration_reduces_the_layer_gap_and_keeps_the_input(method, make):
    model = make()
    snn = convert(model, "if")
    sig = model_signature(snn)
    data = [(images(16, seed=s), None) for s in range(2)]
    log = CalibrationLog(method, 2)
    fixed = calibrate(snn, data, T=2, method=method, batches=2, log=log, granularity="channel")
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
    assert fixed.config["calibration"] == {"method": method, "T": 2, "images": 32, "granularity": "channel"}  # fmt: skip


def test_gn_exact_network_is_left_as_it_is():
    model = make_vgg()
    gn = convert(model, "gn", tau=4)
    x = images(16)
    fixed = calibrate(gn, x, T=1, method="potential", batches=1)
    assert torch.equal(run(fixed, x, T=1), run(gn, x, T=1))
    assert all(float(n.v_offset.abs().max()) == 0 for _, n in fixed.spiking_layers())


def test_offset_survives_state_dict_and_reset():
    model = make_vgg()
    fixed = calibrate(
        convert(model, "if"), images(16), T=2, method="potential", batches=1, guard=False
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
    with pytest.raises(ValueError, match="method must be one of bias, potential, cos, got 'magic'"):
        calibrate(snn, images(4), T=2, method="magic")
    with pytest.raises(TypeError, match="SpikingNetwork"):
        calibrate(make_vgg(), images(4), T=2)
    with pytest.raises(ValueError, match="T"):
        calibrate(snn, images(4), T=0)
    # A neuron fed by the input directly has no layer to carry a bias.
    bare = convert(nn.Sequential(QCFS(4, init_threshold=1.0), nn.Linear(3, 2)).eval(), "if")
    with pytest.raises(ValueError, match="method 'bias' needs .* use method='potential'"):
        calibrate(bare, torch.rand(4, 3), T=2, method="bias")
    assert calibrate(bare, torch.rand(4, 3), T=2, method="potential") is not bare


def test_relu_network_calibrates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()  # fmt: skip
    data = torch.randn(256, 6)
    snn = convert(model, "if", calibration=data)  # θ = 99.9th percentile, v(0) = 0
    for method in ("bias", "potential"):
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
    once = calibrate(snn, data, T=2, method="potential", batches=2, guard=False)
    twice = calibrate(snn, data, T=2, method="potential", batches=2, guard=False, rounds=2)
    again = calibrate(once, data, T=2, method="potential", batches=2, guard=False)
    x = images(8, seed=4)
    assert torch.equal(run(twice, x, T=2), run(again, x, T=2))  # = the pass applied twice
    assert twice.config["calibration"]["after"]["method"] == "potential"
    with pytest.raises(ValueError, match="rounds > 1 needs method='potential'"):
        calibrate(snn, data, T=2, method="bias", rounds=2)
    with pytest.raises(ValueError, match="rounds"):
        calibrate(snn, data, T=2, method="potential", rounds=0)


# ----------------------------------------------------------------- methods by their papers


def test_offset_is_a_deprecated_name_of_potential_per_channel():
    snn = convert(make_vgg(), "if")
    data = images(16)
    with pytest.warns(FutureWarning, match="'offset' is deprecated"):
        old = calibrate(snn, data, T=2, method="offset", batches=1, guard=False)
    new = calibrate(snn, data, T=2, method="potential", granularity="channel", batches=1,
                    guard=False)  # fmt: skip
    x = images(8, seed=3)
    assert torch.equal(run(old, x, T=2), run(new, x, T=2))
    assert old.config["calibration"]["granularity"] == "channel"


def test_potential_per_neuron_is_li_et_al_formula():
    """v(0) += T·E_x[a_ANN − r_SNN] per neuron (Li et al. 2021), measured on the data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), QCFS(4, init_threshold=1.0),
                          nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).eval()  # fmt: skip
    snn = convert(model, "if")
    x = torch.rand(32, 2, 5, 5)
    with torch.no_grad():
        z = model[0](x)
        target = torch.minimum(model[1](z).clamp_min(0), torch.tensor(1.0))  # a_ANN in [0, θ]
        rate = ann2snn.simulation.spike_rates(snn, x, ann2snn.Schedule(2), 10_000)[0]
    rate = next(iter(rate.values()))  # [32, 3, 5, 5]: the neuron's mean emitted value
    fixed = calibrate(snn, x, T=2, method="potential", batches=1, guard=False)
    (neuron,) = [n for _, n in fixed.spiking_layers()]
    assert neuron.v_offset.shape == (3, 5, 5)  # one shift per neuron
    torch.testing.assert_close(neuron.v_offset, 2 * (target - rate).mean(0))


def test_cos_removes_an_offset_spike_by_one_threshold():
    """θ = 1, v(0) = ½, inputs 0.6, −0.5, 0, 0: the first step fires and the charge taken
    back leaves v < 0 after ρ = 4 steps — one spike too many. COS lowers v(0) by one θ
    and the neuron stays silent, as the total input 0.1 asks."""
    from ann2snn.nn.neurons import IFNeuron

    x = torch.tensor([[0.6], [-0.5], [0.0], [0.0]])
    plain = IFNeuron(1.0)
    assert plain.multi_step(x).sum() == 1.0
    cos = IFNeuron(1.0)
    cos.presim = 4
    assert cos.multi_step(x).sum() == 0.0
    # One spike too few: v ≥ θ after ρ steps (0.5 + 0.3 + 0.3 + 0.3 + 0.3 = 1.7 with one
    # spike at step 2 leaves 0.7 < θ: no offset; with 0.45 each, 2.3 → 2 spikes, v = 0.3).
    ok = IFNeuron(1.0)
    ok.presim = 4
    steady = torch.full((4, 1), 0.45)
    assert torch.equal(ok.multi_step(steady), IFNeuron(1.0).multi_step(steady))
    late = IFNeuron(1.0)
    late.presim = 2
    # inputs −0.4 then 1.0: v = 0.1, 1.1 → fires once at step 2, v = 0.1 (no offset);
    # inputs 0.2, 0.4 → v = 1.1 fires, 0.5: fine; a neuron charged to v ≥ θ without firing
    # only happens with multi-quantum input, which the up-shift covers (one θ up):
    late.v = None
    out = late.multi_step(torch.tensor([[-0.4], [1.0]]))
    assert out.sum() == 1.0


def test_cos_network_reports_its_presimulation_and_is_refused_by_exports(tmp_path):
    model = make_vgg()
    snn = convert(model, "if")
    cos = calibrate(snn, None, T=2, method="cos", rho=2)
    layers = len(snn.layers)
    assert cos.config["calibration"] == {"method": "cos", "T": 2, "rho": 2,
                                         "presim_steps": 2 * layers}  # fmt: skip
    x = images(8)
    # However the steps are chunked, the first call brings the ρ steps and the rest follow
    # on from there: the same outputs with one step per call as with all at once.
    four = calibrate(snn, None, T=4, method="cos", rho=3)
    torch.testing.assert_close(run(four, x, T=4, max_fold=8), run(four, x, T=4))
    # ρ > T: the layers run ρ steps to feed the pre-simulation; T are read.
    deep = calibrate(snn, None, T=1, method="cos", rho=4)
    assert run(deep, x, T=1).shape == run(snn, x, T=1).shape
    with pytest.raises(ValueError, match="activity counting of a COS network needs rho <= T"):
        ann2snn.simulate(deep, (x, torch.zeros(8, dtype=torch.long)), T=1, activity=True)
    x = images(8)
    assert run(cos, x, T=2).shape == run(snn, x, T=2).shape
    assert all(n.presim == 0 for _, n in snn.spiking_layers())  # the input is unchanged
    with pytest.raises(ValueError, match="NIR export: this network uses offset-spike"):
        ann2snn.export_nir(cos, tmp_path / "c.nir", x)
    with pytest.raises(ValueError, match="method 'cos' detects offset spikes of IF"):
        calibrate(convert(model, "gn", tau=4), None, T=1, method="cos")
    with pytest.raises(ValueError, match="needs calibration data"):
        calibrate(snn, None, T=2, method="potential")


def test_auto_keeps_the_candidate_closest_to_the_ann():
    snn = convert(make_resnet(), "if")
    data = [(images(16, seed=s), None) for s in range(2)]
    log = CalibrationLog("auto", 2)
    best = calibrate(snn, data, T=2, method="auto", batches=2, log=log)
    assert set(log.candidates) == {"potential", "bias"}
    assert log.method == min(log.candidates, key=log.candidates.get)
    assert best.config["calibration"]["method"] == log.method
