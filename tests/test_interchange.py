"""NIR export/import: a lossless round trip for IF, GN and CIF networks."""

from __future__ import annotations

import pytest
import torch
from test_binarization import CASES, _spikes, assert_same_outputs

from ann2snn import binarize, convert

nir = pytest.importorskip("nir")

from ann2snn.deploy.nir import NIRExportError, export_nir, import_nir  # noqa: E402


@pytest.mark.parametrize("case", ["cnn-if", "cnn-gn", "resnet20-if", "resnet20-gn", "resnet20-cif"])
def test_round_trip_equals_the_snn_at_every_step(case, tmp_path):
    make, neuron, opts = CASES[case]
    model = make()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2
    snn = convert(model, neuron, **opts)
    sleep = 8 if neuron == "cif" else 0
    path = tmp_path / "net.nir"
    losses = export_nir(snn, path, x, sleep=sleep)
    graph = nir.read(str(path))  # a valid NIR file for any reader
    ifs = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert len(ifs) == len(snn.layers)
    assert all(n.metadata["ann2snn"]["reset"] == "subtract" for n in ifs)
    assert graph.metadata["ann2snn"]["schedule"]["sleep"] == sleep
    assert len(losses) == len(snn.layers) + (1 if sleep else 0)
    assert all("reset by subtraction" in line for line in losses[: len(snn.layers)])
    back = import_nir(path).double()
    ref, _ = _spikes(snn, x, sleep=sleep)
    got, spikes = _spikes(back, x, sleep=sleep)
    assert got.shape == ref.shape
    assert_same_outputs(got, ref, exact=not case.endswith("-gn"))
    # Against the deploy form it was written from (NIR holds fp32 weights).
    deploy, _ = _spikes(binarize(snn, x), x, sleep=sleep)
    assert_same_outputs(got, deploy, exact=not case.endswith("-gn"))
    assert all(torch.isin(s, s.new_tensor([-1.0, 0.0, 1.0])).all() for s in spikes)
    if neuron == "cif":
        assert "negative spikes" in losses[0]
        assert all(n.negative_spikes for _, n in back.spiking_layers())


def test_what_nir_cannot_express_is_refused_by_name(tmp_path):
    make, neuron, opts = CASES["cnn-lipool-cif"]
    snn = convert(make(), neuron, **opts)
    with pytest.raises(NIRExportError, match="LIPool"):
        export_nir(snn, tmp_path / "x.nir", torch.rand(2, 1, 28, 28, dtype=torch.float64))
    assert not (tmp_path / "x.nir").exists()
    with pytest.raises(FileNotFoundError, match="no NIR file"):
        import_nir(tmp_path / "missing.nir")


def test_plain_reader_runs_nir_if_as_specified(tmp_path):
    # One channel, constant input 0.3 against θ = 1: ann2snn's IF (v(0) = θ/2, reset by
    # subtraction) fires at steps 2 and 5 (v = 0.8, 1.1 → 0.1, 0.4, 0.7, 1.0 → 0, ...); NIR's IF as written
    # (v(0) = 0, fire on v > θ, reset to 0) at steps 4 and 8.
    from torch import nn

    from ann2snn import QCFS

    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(0.3)
    model = nn.Sequential(lin, QCFS(4, init_threshold=1.0), nn.Linear(1, 1)).eval()
    with torch.no_grad():
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()
    snn = convert(model, "if")
    x = torch.ones(2, 1)
    export_nir(snn, tmp_path / "one.nir", x)
    ours, _ = _spikes(import_nir(tmp_path / "one.nir"), x, steps=8)
    plain, spikes = _spikes(import_nir(tmp_path / "one.nir", metadata=False), x, steps=8)
    fired = lambda out: [t + 1 for t in range(8) if out[t, 0, 0] > 0]  # noqa: E731
    assert fired(ours) == [2, 5]
    assert fired(plain) == [4, 8]
    assert all(torch.isin(s, s.new_tensor([0.0, 1.0])).all() for s in spikes)


@pytest.mark.parametrize("size, exported", [(5, False), (4, True)])
def test_ceil_mode_pool_is_refused_by_name_unless_its_windows_fit(size, exported, tmp_path):
    # The zoo's vgg16 at 28 px pools 7 → 4 with ceil_mode: the last window overhangs, and
    # NIR's AvgPool2d (always k² in the divisor) cannot say it.
    from torch import nn

    from ann2snn import QCFS

    model = nn.Sequential(nn.Conv2d(1, 2, 1), QCFS(4, 1.0), nn.AvgPool2d(2, ceil_mode=True),
                          nn.Flatten(), nn.Linear(2 * (-(-size // 2)) ** 2, 3)).eval()  # fmt: skip
    snn = convert(model, "if")
    x = torch.rand(2, 1, size, size)
    path = tmp_path / "net.nir"
    if exported:
        export_nir(snn, path, x)
        back = import_nir(path)
        ref, _ = _spikes(binarize(snn, x), x)
        assert_same_outputs(_spikes(back, x)[0], ref)
        return
    with pytest.raises(NIRExportError, match=r"average pool '2'.*ceil_mode=True.*5×5 input"):
        export_nir(snn, path, x)
    assert not path.exists()


@pytest.mark.parametrize("case", ["cnn-if", "cnn-gn", "resnet20-if"])
def test_sum_pool_profile_writes_sum_pools_and_imports_to_the_same_network(case, tmp_path):
    """profile='sum-pool' (the pooling node Norse and sinabs map): every average pool is a
    SumPool2d, its 1/k² in the next weights; the file reads back to the same network."""
    make, neuron, opts = CASES[case]
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2
    snn = convert(make(), neuron, **opts)
    plain, summed = tmp_path / "avg.nir", tmp_path / "sum.nir"
    export_nir(snn, plain, x)
    export_nir(snn, summed, x, profile="sum-pool")
    kinds = lambda p: [type(n).__name__ for n in nir.read(str(p)).nodes.values()]  # noqa: E731
    assert "AvgPool2d" in kinds(plain) and "AvgPool2d" not in kinds(summed)
    assert kinds(summed).count("SumPool2d") == kinds(plain).count("AvgPool2d")
    assert nir.read(str(summed)).metadata["ann2snn"]["profile"] == "sum-pool"
    got, _ = _spikes(import_nir(summed).double(), x)
    ref, _ = _spikes(import_nir(plain).double(), x)
    assert_same_outputs(got, ref, exact=False)


def test_sum_pool_profile_refuses_a_pool_without_weights_after_it(tmp_path):
    from torch import nn

    from ann2snn import QCFS

    model = nn.Sequential(nn.Conv2d(1, 2, 3), QCFS(4, init_threshold=1.0), nn.AvgPool2d(2)).eval()
    snn = convert(model, "if")
    with pytest.raises(NIRExportError, match="average pool .* feeds Output .* profile='ann2snn'"):
        export_nir(snn, tmp_path / "x.nir", torch.rand(2, 1, 8, 8), profile="sum-pool")
    with pytest.raises(
        ValueError, match="profile must be one of 'ann2snn', 'sum-pool', got 'norse'"
    ):
        export_nir(snn, tmp_path / "x.nir", torch.rand(2, 1, 8, 8), profile="norse")
