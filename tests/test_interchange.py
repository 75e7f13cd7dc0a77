"""NIR export/import: a lossless round trip for IF, GN and CIF networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_binarization import CASES, _spikes, assert_same_outputs

from ann2snn import binarize, convert

nir = pytest.importorskip("nir")

from ann2snn.deploy.nir import NIR_PROFILES, NIRExportError, export_nir, import_nir  # noqa: E402


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


def _kinds(path) -> list[str]:
    return [type(n).__name__ for n in nir.read(str(path)).nodes.values()]


@pytest.mark.parametrize("profile", [p for p in NIR_PROFILES if p != "ann2snn"])
@pytest.mark.parametrize("case", ["cnn-if", "cnn-gn", "resnet20-if", "resnet20-gn"])
def test_every_profile_imports_back_to_the_same_network(case, profile, tmp_path):
    """Each reader's file holds the same network: read back by ann2snn (its metadata), it
    runs as the ``ann2snn`` file does at every step."""
    make, neuron, opts = CASES[case]
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2
    snn = convert(make(), neuron, **opts)
    plain, theirs = tmp_path / "ann2snn.nir", tmp_path / f"{profile}.nir"
    export_nir(snn, plain, x)
    losses = export_nir(snn, theirs, x, profile=profile)
    assert len(losses) >= len(snn.layers)
    assert nir.read(str(theirs)).metadata["ann2snn"]["profile"] == profile
    got, _ = _spikes(import_nir(theirs).double(), x)
    ref, _ = _spikes(import_nir(plain).double(), x)
    assert_same_outputs(got, ref, exact=False)


@pytest.mark.parametrize("case", ["cnn-gn", "resnet20-if"])
def test_profiles_write_what_their_readers_map(case, tmp_path):
    make, neuron, opts = CASES[case]
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2
    snn = convert(make(), neuron, **opts)
    files = {p: tmp_path / f"{p}.nir" for p in NIR_PROFILES}
    for p, path in files.items():
        export_nir(snn, path, x, profile=p)
    kinds = {p: _kinds(path) for p, path in files.items()}
    # Pooling: Norse and sinabs map SumPool2d only, one per average pool.
    for p in ("sinabs", "norse"):
        assert "AvgPool2d" not in kinds[p]
        assert kinds[p].count("SumPool2d") == kinds["ann2snn"].count("AvgPool2d")
    # No Scale node for the readers (none maps it): diagonal maps, additions as edges.
    for p in ("spikingjelly", "sinabs", "norse", "snntorch"):
        assert "Scale" not in kinds[p]
    # Readers that give Flatten.start_dim to torch: one Flatten, at the output, start_dim 1.
    for p in ("norse", "snntorch"):
        graph = nir.read(str(files[p]))
        flats = [n for n in graph.nodes.values() if isinstance(n, nir.Flatten)]
        assert len(flats) == 1 and flats[0].start_dim == 1
        assert ("flatten_output", "output") in graph.edges
    # The step: SpikingJelly checks r = 1/dt (dt = 1e-4); snnTorch gets leak-free LIFs.
    sj = nir.read(str(files["spikingjelly"]))
    assert all(np.allclose(n.r, 1e4) for n in sj.nodes.values() if isinstance(n, nir.IF))
    assert "IF" not in kinds["snntorch"] and "LIF" in kinds["snntorch"]
    lifs = [n for n in nir.read(str(files["snntorch"])).nodes.values() if isinstance(n, nir.LIF)]
    assert all(np.all(1 - 1e-4 / n.tau.astype(np.float32) == np.float32(1)) for n in lifs)


def test_the_sinabs_file_is_in_the_schema_nir_1_0_4_reads(tmp_path):
    """nir <= 1.0.4 (sinabs' pin) passes a node's metadata to constructors that take none
    and has no v_reset: neither is in the file where that reader would trip on it."""
    import h5py

    make, neuron, opts = CASES["resnet20-gn"]
    path = tmp_path / "s.nir"
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    export_nir(convert(make(), neuron, **opts), path, x, profile="sinabs")
    with h5py.File(path) as f:
        for key, node in f["node"]["nodes"].items():
            assert "v_reset" not in node, key
            if node["type"][()] in (b"Conv2d", b"Scale", b"Input", b"Output", b"Linear"):
                assert "metadata" not in node, key


def test_sum_pool_profiles_refuse_a_pool_without_weights_after_it(tmp_path):
    from torch import nn

    from ann2snn import QCFS

    model = nn.Sequential(nn.Conv2d(1, 2, 3), QCFS(4, init_threshold=1.0), nn.AvgPool2d(2)).eval()
    snn = convert(model, "if")
    for profile in ("sinabs", "norse"):
        with pytest.raises(
            NIRExportError, match=f"profile '{profile}'.*average pool .* feeds Output"
        ):
            export_nir(snn, tmp_path / "x.nir", torch.rand(2, 1, 8, 8), profile=profile)
    assert not (tmp_path / "x.nir").exists()
    padded = nn.Sequential(nn.Conv2d(1, 2, 3), QCFS(4, init_threshold=1.0),
                           nn.AvgPool2d(2, padding=1), nn.Flatten(), nn.Linear(32, 3)).eval()  # fmt: skip
    with pytest.raises(NIRExportError, match="'sinabs'.*pads its input.*no padding"):
        export_nir(
            convert(padded, "if"), tmp_path / "x.nir", torch.rand(2, 1, 8, 8), profile="sinabs"
        )
    with pytest.raises(ValueError, match="profile must be one of 'ann2snn', 'nir', .*got 'lava'"):
        export_nir(snn, tmp_path / "x.nir", torch.rand(2, 1, 8, 8), profile="lava")
