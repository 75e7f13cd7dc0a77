"""LIPool (lateral-inhibition spiking max-pool, methods.md §3.4) and how conversion treats
max-pooling: supported under the consistent IF neuron, unsupported (with a fix) under IF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ann2snn import (
    ClipQuant,
    ConversionError,
    LIPool,
    SpikingNetwork,
    check,
    convert,
    reset,
)

GEOMETRIES = [
    pytest.param(dict(kernel_size=2), id="k2-nonoverlap"),
    pytest.param(dict(kernel_size=3, stride=2, padding=1), id="k3s2p1-overlap"),
    pytest.param(dict(kernel_size=3, stride=1), id="k3s1-overlap"),
    pytest.param(dict(kernel_size=3, stride=2, ceil_mode=True), id="k3s2-ceil"),
]


def _inputs(steps: int, seed: int, shape=(2, 3, 9, 9)) -> torch.Tensor:
    """Random signed per-step inputs [steps, B, C, H, W] (spike-like corrections and noise)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, *shape, generator=g) * 2.0


def _assert_cumulative_max(xs: torch.Tensor, outs: torch.Tensor, geometry: dict) -> None:
    """After every step: cumulative output == max_pool2d(cumulative input)."""
    cum_in = xs.cumsum(0)
    cum_out = outs.cumsum(0)
    for t in range(xs.shape[0]):
        expected = F.max_pool2d(cum_in[t], **geometry)
        torch.testing.assert_close(cum_out[t], expected, rtol=0, atol=1e-5, msg=f"step {t + 1}")


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_single_step_cumulative_output_is_max_of_cumulative_input(geometry):
    xs = _inputs(12, seed=1)
    pool = LIPool(**geometry)
    outs = torch.stack([pool(x) for x in xs])
    _assert_cumulative_max(xs, outs, geometry)
    # The per-step output is NOT max_pool2d of the per-step input (that would be the
    # naive, wrong spiking max-pool): the test above is not vacuous.
    naive = torch.stack([F.max_pool2d(x, **geometry) for x in xs])
    assert (naive.cumsum(0)[-1] - outs.cumsum(0)[-1]).abs().max() > 0.1


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_folded_use_matches_single_step(geometry):
    """`_fold` = T (as set by SpikingNetwork): [T·B, ...] in, same result as T single steps."""
    xs = _inputs(7, seed=2)
    steps, batch = xs.shape[:2]
    single = LIPool(**geometry)
    ref = torch.stack([single(x) for x in xs])

    folded = LIPool(**geometry)
    folded.folded_steps = steps
    out = folded(xs.flatten(0, 1)).unflatten(0, (steps, batch))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    _assert_cumulative_max(xs, out, geometry)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_in_network_chunks_keep_state(geometry):
    """Inside a SpikingNetwork fed in chunks of steps (state persists across calls)."""
    xs = _inputs(10, seed=3)
    net = SpikingNetwork(nn.Sequential(LIPool(**geometry)), "cif", [], {})
    outs = torch.cat([net(xs[:3]), net(xs[3:4]), net(xs[4:])])
    assert outs.shape[:2] == xs.shape[:2]
    _assert_cumulative_max(xs, outs, geometry)
    # ANN mode is the plain max-pool and does not touch the state.
    state = net.body[0].sum_in.clone()
    torch.testing.assert_close(net.ann_forward(xs[0]), F.max_pool2d(xs[0], **geometry))
    torch.testing.assert_close(net.body[0].sum_in, state)


def test_reset_clears_state():
    geometry = dict(kernel_size=3, stride=2, padding=1)
    xs = _inputs(5, seed=4)
    pool = LIPool(**geometry)
    for x in xs:
        pool(x)
    assert pool.sum_in is not None
    pool.reset()
    assert pool.sum_in is None and pool.sum_out is None
    # After a reset the first step is a fresh start: exactly max_pool2d of that input.
    torch.testing.assert_close(pool(xs[0]), F.max_pool2d(xs[0], **geometry))

    # The package-level reset (used by SpikingNetwork.reset) reaches spiking pools too.
    net = SpikingNetwork(nn.Sequential(LIPool(**geometry)), "cif", [], {})
    net(xs)
    net.reset()
    assert net.body[0].sum_in is None
    torch.testing.assert_close(net(xs[:1])[0], F.max_pool2d(xs[0], **geometry))
    reset(net)
    assert net.body[0].sum_in is None


def test_from_maxpool_copies_geometry():
    mp = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    lp = LIPool.from_maxpool(mp)
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(lp(x), mp(x))
    assert LIPool(2).stride == 2  # stride defaults to the kernel size, like nn.MaxPool2d


def test_all_negative_inputs_are_pooled_not_rectified():
    """The pool takes the max of signed cumulative inputs (no implicit ReLU)."""
    geometry = dict(kernel_size=2)
    xs = -torch.rand(4, 1, 2, 4, 4) - 0.5
    pool = LIPool(**geometry)
    outs = torch.stack([pool(x) for x in xs])
    assert (outs.cumsum(0)[-1] < 0).all()
    _assert_cumulative_max(xs, outs, geometry)


# ----------------------------------------------------------------------------- conversion


def _maxpool_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        ClipQuant(4),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()


def test_check_reports_maxpool_supported_under_cif():
    model = _maxpool_model()
    report = check(model, neuron="cif")
    assert report.ok, str(report)
    pool_ops = [o for o in report.ops if o.op == "MaxPool2d"]
    assert len(pool_ops) == 1
    assert pool_ops[0].status == "spiking-pool"
    assert pool_ops[0].name == "2"


def test_check_reports_maxpool_unsupported_under_if_with_fix():
    model = _maxpool_model()
    report = check(model, neuron="if")
    assert not report.ok
    (bad,) = report.unsupported
    assert bad.op == "MaxPool2d" and bad.name == "2"
    assert "pool='avg'" in bad.fix
    assert "cif" in bad.fix
    with pytest.raises(ConversionError, match="pool='avg'"):
        convert(model, neuron="if")


def test_convert_cif_swaps_maxpool_for_lipool():
    model = _maxpool_model()
    snn = convert(model, neuron="cif")
    pools = [m for m in snn.modules() if isinstance(m, LIPool)]
    assert len(pools) == 1
    assert not any(isinstance(m, nn.MaxPool2d) for m in snn.modules())
    assert (pools[0].kernel_size, pools[0].stride, pools[0].padding) == (3, 2, 1)
    # The source model is untouched.
    assert isinstance(model[2], nn.MaxPool2d)
    # ANN mode of the converted graph is the source ANN.
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(snn.ann_forward(x), model(x), rtol=1e-5, atol=1e-5)
