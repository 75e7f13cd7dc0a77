"""NIR files from strangers: each case edits a valid file the way a careless or hostile
writer would, and `import_nir` must refuse it by name before it allocates or runs anything,
or run it correctly. Nothing here may raise a raw error from h5py, torch.fx or Python."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ann2snn import QCFS, convert

nir = pytest.importorskip("nir")
h5py = pytest.importorskip("h5py")

from ann2snn.deploy.nir import NIRImportError, export_nir, import_nir  # noqa: E402


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A valid file's graph: conv → IF → flatten → linear (+ metadata)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), QCFS(4, 1.0), nn.Flatten(), nn.Linear(32, 3)
    )
    path = tmp_path_factory.mktemp("nir") / "ok.nir"
    export_nir(convert(model.eval()), path, torch.rand(2, 1, 4, 4))
    return nir.read(str(path))


def _if_key(g) -> str:
    return next(k for k, n in g.nodes.items() if isinstance(n, nir.IF))


def _write(g, tmp_path, name="edited.nir"):
    path = tmp_path / name
    nir.write(str(path), g)
    return path


def _edited(graph, edit):
    g = nir.NIRGraph(
        nodes=dict(graph.nodes), edges=list(graph.edges), metadata=dict(graph.metadata)
    )
    edit(g)
    return g


def _weights_nan(g):
    key = next(k for k, n in g.nodes.items() if isinstance(n, nir.Conv2d))
    w = np.array(g.nodes[key].weight)
    w.flat[0] = np.nan
    g.nodes[key] = nir.Conv2d(input_shape=g.nodes[key].input_shape, weight=w, stride=1, padding=1,
                              dilation=1, groups=1, bias=g.nodes[key].bias)  # fmt: skip


def _per_neuron_threshold(g):
    n = g.nodes[_if_key(g)]
    theta = np.array(n.v_threshold, dtype=np.float32)
    theta.flat[0] *= 2
    g.nodes[_if_key(g)] = nir.IF(r=n.r, v_threshold=theta, v_reset=n.v_reset, metadata=n.metadata)


def _members(g):
    n = g.nodes[_if_key(g)]
    meta = {"ann2snn": {"op": "MemberExpand", "members": 10**9}}
    g.nodes["m"] = nir.Scale(np.ones((2, 4, 4), np.float32), metadata=meta)
    g.edges = [(s, "m" if d == _if_key(g) else d) for s, d in g.edges] + [("m", _if_key(g))]
    del n


def _orphan(g):
    g.nodes["lonely"] = nir.Scale(np.ones(3, np.float32))
    g.edges.append(("lonely", "output"))


def _second_input(g):
    g.nodes["input2"] = nir.Input({"input": np.array([1, 4, 4])})
    g.edges.append(("input2", next(d for s, d in g.edges if s == "input")))


def _cycle(g):
    first = next(d for s, d in g.edges if s == "input")
    g.edges.append((_if_key(g), first))


def _dangling_edge(g):
    g.edges.append(("nowhere", "output"))


def _bad_step(g):
    g.metadata = {"ann2snn": {**g.metadata["ann2snn"], "dt": -1.0}}


def _bad_flatten(g):
    g.metadata = {"ann2snn": {**g.metadata["ann2snn"], "flatten": "diagonal"}}


def _leaky_lif(g):
    n = g.nodes[_if_key(g)]
    ones = np.ones_like(n.r)
    g.nodes[_if_key(g)] = nir.LIF(tau=ones * 5, r=ones * 5, v_leak=0 * ones,
                                  v_threshold=n.v_threshold, metadata=n.metadata)  # fmt: skip


CASES = {
    "NaN weight": (_weights_nan, r"node '.*': weight holds 1 NaN/inf"),
    "per-neuron v_threshold": (_per_neuron_threshold, r"per-neuron v_threshold .* not supported"),
    "members = 10**9": (_members, r"metadata members = 1000000000; a group neuron has 1 to 4096"),
    "orphan node": (_orphan, r"node 'lonely' has no incoming edge \(an orphan\)"),
    "second Input": (_second_input, r"the graph has 2 Input nodes"),
    "cycle": (_cycle, r"the graph has a cycle through"),
    "edge to no node": (_dangling_edge, r"edge 'nowhere' → 'output' names no node 'nowhere'"),
    "negative time step": (_bad_step, r"ann2snn.dt = -1.0; a time step is a finite number > 0"),
    "unknown flatten": (_bad_flatten, r"ann2snn.flatten = 'diagonal'; allowed: 'sample', 'torch'"),
    "leaky LIF": (
        _leaky_lif,
        r"a leaky LIF \(τ/dt = 5\); ann2snn runs LIF nodes only without leak",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_edited_graph_is_refused_by_name(graph, tmp_path, case):
    edit, message = CASES[case]
    path = _write(_edited(graph, edit), tmp_path)
    with pytest.raises(NIRImportError, match=message):
        import_nir(path)


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"hello, not hdf5\n", "starts with b'hello")])  # fmt: skip
def test_a_file_that_is_not_hdf5_is_named(tmp_path, content, message):
    (tmp_path / "x.nir").write_bytes(content)
    with pytest.raises(NIRImportError, match=rf"not a NIR file: NIR files are HDF5.*{message}"):
        import_nir(tmp_path / "x.nir")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        import_nir(tmp_path)


def test_compressed_giant_arrays_are_refused_before_they_are_read(graph, tmp_path):
    path = _write(graph, tmp_path)
    with h5py.File(path, "a") as f:  # 2³¹ float32 zeros, gzip: a few MB on disk, 8 GiB read
        f.create_dataset("node/nodes/bomb", shape=(2**31,), dtype="f4", compression="gzip", chunks=(2**20,))  # fmt: skip
    assert path.stat().st_size < 50 * 2**20
    with pytest.raises(
        NIRImportError, match=r"declares 8192\.\d MiB of arrays, more than max_bytes"
    ):
        import_nir(path)


def test_names_that_sanitise_alike_stay_two_modules(graph, tmp_path):
    def twins(g):
        g.nodes["a.b"] = nir.Scale(np.full(3, 2.0, np.float32))
        g.nodes["a_b"] = nir.Scale(np.full(3, 3.0, np.float32))
        g.edges = [(s, d) for s, d in g.edges if d != "output"] + [
            (next(s for s, d in graph.edges if d == "output"), "a.b"), ("a.b", "a_b"), ("a_b", "output")]  # fmt: skip

    back = import_nir(_write(_edited(graph, twins), tmp_path))
    plain = import_nir(_write(graph, tmp_path, "plain.nir"))
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(back(x.unsqueeze(0)), 6 * plain(x.unsqueeze(0)))


def test_a_long_chain_imports_without_recursion(tmp_path):
    n = 1500  # deeper than Python's recursion limit
    nodes = {"input": nir.Input({"input": np.array([3])}), "output": nir.Output({"output": np.array([3])})}  # fmt: skip
    nodes |= {f"s{i}": nir.Scale(np.ones(3, np.float32)) for i in range(n)}
    edges = [("input", "s0")] + [(f"s{i}", f"s{i + 1}") for i in range(n - 1)] + [(f"s{n - 1}", "output")]  # fmt: skip
    path = tmp_path / "chain.nir"
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges))
    net = import_nir(path)
    x = torch.rand(2, 3)
    torch.testing.assert_close(net(x.unsqueeze(0))[0], x)


def test_plain_nir_if_honours_r_and_v_reset(tmp_path):
    # NIR's IF as written: v ← v + r·x; spike when v > θ; reset to v_reset (dt = 1).
    nodes = {
        "input": nir.Input({"input": np.array([1])}),
        "if": nir.IF(r=np.full(1, 2.0), v_threshold=np.full(1, 1.0), v_reset=np.full(1, 0.25)),
        "output": nir.Output({"output": np.array([1])}),
    }
    path = tmp_path / "if.nir"
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=[("input", "if"), ("if", "output")]))
    for metadata in (True, False):  # no ann2snn metadata in the file: NIR's IF either way
        net = import_nir(path, metadata=metadata)
        out = net(torch.full((6, 1, 1), 0.3))[:, 0, 0]
        # v: 0.6, 1.2 → spike → 0.25, 0.85, 1.45 → spike → 0.25, 0.85, 1.45 → spike
        assert out.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_export_onto_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), QCFS(4, 1.0), nn.Flatten(), nn.Linear(32, 3)
    )
    with pytest.raises(OSError, match="No space left on device: the NIR file needs about"):
        export_nir(convert(model.eval()), tmp_path / "net.nir", torch.rand(2, 1, 4, 4))
    assert list(tmp_path.iterdir()) == []
