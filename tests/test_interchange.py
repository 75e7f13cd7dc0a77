"""NIR export/import: a lossless round trip for IF, GN and CIF networks."""

from __future__ import annotations

import pytest
import torch
from test_binarization import CASES, _spikes, assert_same_outputs

from ann2snn import binarize, convert

nir = pytest.importorskip("nir")

from ann2snn.interchange import NIRExportError, export_nir, import_nir  # noqa: E402


@pytest.mark.parametrize("case", ["cnn-if", "cnn-gn", "resnet20-if", "resnet20-gn", "resnet20-cif"])
def test_round_trip_equals_the_snn_at_every_step(case, tmp_path):
    make, neuron, opts = CASES[case]
    model = make()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2
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
