"""`ann2snn.binarize`: 0/±1 spikes, θ in the weights, the same outputs at every step."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_resnet, make_vgg, randomize

import ann2snn
from ann2snn import SpikeScale, binarize, calibrate, convert, create_model
from ann2snn.nn.neurons import SpikingNeuron

T = 6


def _spikes(net, x, steps=T, sleep=0):
    """Per-step outputs [T, B, out] and every neuron's outputs (all steps) of one run."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
             for m in net.modules() if isinstance(m, SpikingNeuron)]  # fmt: skip
    net.reset()
    try:
        with torch.no_grad():
            out = net(x.unsqueeze(0).expand(steps, *x.shape))
            if sleep:
                with net.sleeping():
                    out = torch.cat([out, net(x.new_zeros(sleep, *x.shape))])
    finally:
        for h in hooks:
            h.remove()
        net.reset()
    return out, seen


def assert_same_outputs(got, ref, exact=True):
    """Per-step outputs equal up to the rounding of folded weights. A group neuron's
    members keep τ membranes where the group kept one, summed in another order: in fp32
    a membrane within rounding of a threshold can fire in one and not the other (seen on
    ResNet-20 with fp32 state: a few of ~10⁶ neuron-steps), so ``exact=False`` allows a
    tiny share of outputs to differ (NIR files hold fp32 weights)."""
    bad = (got - ref).abs() > 1e-4 * ref.abs().max().clamp_min(1)
    if exact:
        assert not bad.any(), float((got - ref).abs().max())
    else:  # exact at the first step; later, a flipped spike moves the output a little
        assert not bad[0].any(), float((got[0] - ref[0]).abs().max())
        assert float((got - ref).abs().mean()) < 0.02 * float(ref.abs().mean())


def _zoo(name, act, levels, pool="avg"):
    # float64 networks (layers, membranes and θ): folding BN and θ into weights
    # reassociates sums, and in fp32 a few of the ~10⁶ neuron-steps of a ResNet-20 sit
    # within rounding of a threshold (one flipped spike then propagates); in fp64 the
    # deploy form is exact, group neurons included.
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, act=act, levels=levels, pool=pool,
                         image_size=28)  # fmt: skip
    model = randomize(model, 7, lam_range=(0.5, 2.0)) if act != "clipq" else randomize(model, 7)
    return model.double()


CASES = {
    "cnn-if": (lambda: _zoo("cnn", "qcfs", 4), "if", {}),
    "cnn-gn": (lambda: _zoo("cnn", "qcfs", 4), "gn", {"tau": 4}),
    "resnet20-if": (lambda: _zoo("resnet20", "qcfs", 4), "if", {}),
    "resnet20-gn": (lambda: _zoo("resnet20", "qcfs", 4), "gn", {"tau": 4}),
    "resnet20-cif": (lambda: _zoo("resnet20", "clipq", 8), "cif", {}),
    "cnn-lipool-cif": (lambda: _zoo("cnn", "clipq", 8, pool="max"), "cif", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_binarized_output_equals_the_snn_at_every_step(case):
    make, neuron, opts = CASES[case]
    model = make()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2
    snn = convert(model, neuron, **opts)
    before = [p.clone() for p in snn.state_dict().values()]
    binary = binarize(snn, x)
    assert all(torch.equal(a, b) for a, b in zip(before, snn.state_dict().values()))
    sleep = 8 if neuron == "cif" else 0
    ref, _ = _spikes(snn, x, sleep=sleep)
    got, spikes = _spikes(binary, x, sleep=sleep)
    assert_same_outputs(got, ref, exact=True)
    assert spikes and all(torch.isin(s, s.new_tensor([-1.0, 0.0, 1.0])).all() for s in spikes)
    if neuron != "cif":
        assert all(bool((s >= 0).all()) for s in spikes)
    assert ann2snn.is_binarized(binary) and not ann2snn.is_binarized(snn)
    if case.startswith("cnn") and neuron != "cif":
        # A plain chain: every scale found a conv/linear to fold into.
        assert not any(isinstance(m, SpikeScale) for m in binary.modules())


def test_group_neuron_becomes_tau_binary_members():
    model = make_vgg()
    gn = convert(model, "gn", tau=4)
    x = images(4)
    binary = binarize(gn, x)
    members = [m for _, m in binary.spiking_layers()]
    assert all(type(m) is ann2snn.IFNeuron and m.binary for m in members)
    first = members[0]
    # τ·C members, staggered by θ/τ from v(0) = θ/(2τ).
    theta = float(first.threshold)
    offsets = first.v_offset.reshape(4, -1)[:, 0]
    assert torch.allclose(offsets, torch.tensor([0.5, 1.5, 2.5, 3.5]) * theta / 4)
    out_ref, _ = _spikes(gn, x, steps=1)
    out, _ = _spikes(binary, x, steps=1)
    assert torch.allclose(out, out_ref, atol=1e-5)
    assert torch.allclose(out[0], model(x), atol=1e-5)  # τ = L is exact at T = 1


@pytest.mark.parametrize("neuron", ["if", "gn"])
@pytest.mark.parametrize("granularity", ["neuron", "channel", "layer"])
@pytest.mark.parametrize("make", [make_vgg, make_resnet])
def test_calibrated_network_binarizes_and_keeps_its_offsets(make, granularity, neuron):
    """v(0) per layer, per channel or per neuron; for GN each member gets its neuron's
    (a per-neuron GN offset once failed to expand onto the τ·C members)."""
    snn = convert(make(), neuron, **({"tau": 4} if neuron == "gn" else {}))
    snn = calibrate(snn, images(32), T=2, method="potential", granularity=granularity,
                    batches=1, guard=False)  # fmt: skip
    x = images(4, seed=2)
    ref, _ = _spikes(snn, x, steps=2)
    got, _ = _spikes(binarize(snn, x), x, steps=2)
    assert torch.allclose(got, ref, atol=1e-5)


def test_unfolded_form_and_errors():
    model = make_resnet()
    snn = convert(model, "if")
    x = images(2)
    kept = binarize(snn, x, fold=False)
    assert kept.config["folded_scales"] == 0
    assert sum(isinstance(m, SpikeScale) for m in kept.modules()) == len(snn.layers)
    with pytest.raises(ValueError, match="binarized already"):
        binarize(kept, x)
    with pytest.raises(RuntimeError, match="no ANN pass"):
        kept.ann_forward(x)
    with pytest.raises(TypeError, match="SpikingNetwork"):
        binarize(model, x)

    @ann2snn.register_neuron("test_binarize_custom")
    class Custom(ann2snn.IFNeuron):
        pass

    with pytest.raises(ValueError, match="is a Custom; binary forms exist for"):
        binarize(convert(model, "test_binarize_custom"), x)
