"""Running ann2snn's SNNs in other simulators (skipped where the simulator is absent;
`make integrations` installs them)."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_resnet, make_vgg

from ann2snn import calibrate, convert, run

sj = pytest.importorskip("spikingjelly.activation_based.neuron", exc_type=ImportError)


@pytest.mark.parametrize(
    "neuron, make, options",
    [("if", make_vgg, {}), ("gn", make_vgg, {"tau": 4}), ("if", make_resnet, {})],
)
def test_spikingjelly_runs_the_snn_exactly_at_every_step(neuron, make, options):
    from ann2snn.deploy import to_spikingjelly

    snn = convert(make(), neuron, **options)
    x = images(6, seed=2)
    net = to_spikingjelly(snn, x)
    assert {type(m).__name__ for m in net.modules()} >= {"IFNode"}
    # Step by step, as SpikingJelly runs: outputs equal ann2snn's at every step.
    net.reset()
    with torch.no_grad():
        theirs = torch.stack([net(x) for _ in range(6)])
    mine = snn.reset()(x.unsqueeze(0).expand(6, *x.shape))
    snn.reset()
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net.run(x, 3), run(snn, x, T=3), atol=1e-4, rtol=1e-4)


def test_spikingjelly_keeps_a_calibrated_membrane_per_neuron():
    from ann2snn.deploy import to_spikingjelly

    snn = convert(make_vgg(), "if")
    fixed = calibrate(snn, images(16), T=2, batches=1, guard=False)  # v(0) per neuron
    x = images(5, seed=7)
    torch.testing.assert_close(
        to_spikingjelly(fixed, x).run(x, 2), run(fixed, x, T=2), atol=1e-4, rtol=1e-4
    )


def test_spikingjelly_refuses_what_it_cannot_run():
    from ann2snn.deploy import to_spikingjelly
    from ann2snn.models import create_model

    x = images(2)
    cif = convert(create_model("cnn", act="clipq", levels=4, image_size=8), "cif")
    with pytest.raises(ValueError, match="IFNode runs IF and group neurons.*ConsistentIF"):
        to_spikingjelly(cif, x[..., :8, :8])
    cos = calibrate(convert(make_vgg(), "if"), None, T=2, method="cos")
    with pytest.raises(ValueError, match="SpikingJelly export: this network uses offset-spike"):
        to_spikingjelly(cos, x)
