"""Running ann2snn's SNNs in other simulators (each test skips where its simulator is
absent; `make interop` installs SpikingJelly, Norse and snnTorch, and sinabs in a side
environment)."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_resnet, make_vgg, randomize

from ann2snn import calibrate, convert, run
from ann2snn.deploy.readers import READERS, reader_available, run_reader


def _demo_cnn(seed: int = 0) -> torch.nn.Module:
    """The demo's architecture (the zoo's CNN, QCFS L = 4) with random weights and λ."""
    from ann2snn.models import create_model

    torch.manual_seed(seed)
    model = create_model("cnn", act="qcfs", levels=4, in_channels=1, image_size=28)
    return randomize(model, seed + 7, lam_range=(0.5, 2.0))


def _fmnist_like(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("neuron, options", [("if", {}), ("gn", {"tau": 4})])
@pytest.mark.parametrize("reader", list(READERS))
def test_each_reader_runs_its_profile_file_as_written_and_as_predicted(
    reader, neuron, options, tmp_path
):
    """The demo CNN exported for ``reader`` loads there unmodified and computes, at every
    step, what ``import_nir(path, reader=...)`` predicts: so the losses `export_nir`
    lists are the only differences from ann2snn, and the docs' accuracies are the reader's."""
    if reader_available(reader) is None:
        pytest.skip(f"{reader} is not installed (make interop)")
    from ann2snn.deploy.nir import export_nir, import_nir

    snn = convert(_demo_cnn(), neuron, **options)
    x, T = _fmnist_like(8, seed=1), 6
    path = tmp_path / f"{reader}.nir"
    losses = export_nir(snn, path, x, profile=reader)
    assert len(losses) == len(snn.layers)  # one line per layer; nothing about the order
    theirs = run_reader(reader, path, x, T)
    predicted = import_nir(path, reader=reader).reset()(x.unsqueeze(0).expand(T, *x.shape))
    torch.testing.assert_close(theirs, predicted, atol=1e-4, rtol=1e-4)
    assert theirs.shape == (T, 8, 10)


@pytest.mark.parametrize("reader", [r for r in READERS if r != "sinabs"])
def test_readers_run_generated_networks_as_predicted(reader, tmp_path_factory):
    """On networks nobody picked (tests/test_seams.py's generator: convolutions with and
    without BatchNorm, residual additions, average pools, dense heads, θ per layer), each
    reader installed here computes what `import_nir(path, reader=...)` predicts, unless
    the export refused the network or named an execution-order loss."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from test_seams import build, specs

    from ann2snn.deploy.nir import NIRExportError, export_nir, import_nir

    if reader_available(reader) != "here":
        pytest.skip(f"{reader} is not installed here (make interop)")

    @settings(max_examples=8, deadline=None)
    @given(spec=specs(maxpool=False), neuron=st.sampled_from(["if", "gn"]))
    def check(spec, neuron):
        model, x = build(spec)
        snn, x = convert(model.float(), neuron), x.float()
        path = tmp_path_factory.mktemp("gen") / "net.nir"
        try:
            losses = export_nir(snn, path, x, profile=reader)
        except NIRExportError:
            return  # named refusals are test_seams.py's property
        if any("depth-first order" in line for line in losses):
            return
        T = 3
        predicted = import_nir(path, reader=reader).reset()(x.unsqueeze(0).expand(T, *x.shape))
        theirs = run_reader(reader, path, x, T)
        torch.testing.assert_close(theirs, predicted.reshape(theirs.shape), atol=1e-4, rtol=1e-4)

    check()


@pytest.mark.parametrize("reader", ["sinabs", "norse"])
def test_a_depth_first_reader_on_a_projection_shortcut_is_named_not_silent(reader, tmp_path):
    """nirtorch's GraphExecutor (sinabs, Norse) walks the graph depth first: a residual
    block with a convolution on its shortcut joins before one of its inputs is computed,
    and the reader returns another node's value. The export says so."""
    if reader_available(reader) is None:
        pytest.skip(f"{reader} is not installed (make interop)")
    from ann2snn.deploy.nir import export_nir

    snn = convert(make_resnet(), "if")
    x = images(4, seed=2)
    losses = export_nir(snn, tmp_path / "r.nir", x, profile=reader)
    assert any("depth-first order" in line for line in losses)
    assert any("not the output's" in line for line in losses)
    assert run_reader(reader, tmp_path / "r.nir", x, 2).shape[-1] != 5  # not the 5 classes


def _sinabs_here_or_ran_in_side_env(request: pytest.FixtureRequest) -> bool:
    """True when this test already ran, and passed, in the side environment `make interop`
    gives sinabs (its nir <= 1.0.4 pin keeps it out of ours); False to run it here."""
    import os
    import subprocess
    from pathlib import Path

    from ann2snn.deploy.readers import SIDE_PYTHON

    where = reader_available("sinabs")
    if where == "here":
        return False
    if where is None:
        pytest.skip("sinabs is not installed (make interop)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [str(SIDE_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         f"{Path(__file__).resolve()}::{request.node.name}"],
        capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]
    return True


@pytest.mark.parametrize(
    "neuron, make, options",
    [("if", make_vgg, {}), ("gn", make_vgg, {"tau": 4}), ("if", make_resnet, {}),
     ("gn", make_resnet, {"tau": 4})],
)  # fmt: skip
def test_sinabs_runs_the_snn_exactly_at_every_step(neuron, make, options, request):
    """`to_sinabs`: sinabs' own IAF layers (single spikes, reset by subtraction, no floor,
    v(0) set) run the SNN as ann2snn does, residual networks and group neurons included."""
    if _sinabs_here_or_ran_in_side_env(request):
        return
    from ann2snn.deploy.sinabs import to_sinabs

    _adapter_equals_the_snn(to_sinabs, "IAFSqueeze", convert(make(), neuron, **options))


def _adapter_equals_the_snn(adapt, node: str, snn) -> None:
    """``adapt(snn, x)`` holds ``node`` neurons and gives ann2snn's outputs at every step,
    stepped as its simulator steps and through ``run``; a per-neuron v(0) is kept too."""
    x = images(6, seed=2)
    net = adapt(snn, x)
    assert node in {type(m).__name__ for m in net.modules()}
    net.reset()
    with torch.no_grad():
        theirs = torch.stack([net(x) for _ in range(6)])
    mine = snn.reset()(x.unsqueeze(0).expand(6, *x.shape))
    snn.reset()
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net.run(x, 3), run(snn, x, T=3), atol=1e-4, rtol=1e-4)
    fixed = calibrate(snn, images(16), T=2, batches=1, guard=False)  # v(0) per neuron
    torch.testing.assert_close(adapt(fixed, x).run(x, 2), run(fixed, x, T=2), atol=1e-4, rtol=1e-4)


def test_run_reader_names_what_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="name must be one of spikingjelly, sinabs, .*'lava'"):
        run_reader("lava", tmp_path / "x.nir", images(1), 1)


sj = pytest.importorskip("spikingjelly.activation_based.neuron", exc_type=ImportError)


@pytest.mark.parametrize(
    "neuron, make, options",
    [("if", make_vgg, {}), ("gn", make_vgg, {"tau": 4}), ("if", make_resnet, {}),
     ("gn", make_resnet, {"tau": 4})],
)  # fmt: skip
def test_spikingjelly_runs_the_snn_exactly_at_every_step(neuron, make, options):
    from ann2snn.deploy import to_spikingjelly

    _adapter_equals_the_snn(to_spikingjelly, "IFNode", convert(make(), neuron, **options))


def test_spikingjelly_refuses_what_it_cannot_run():
    from ann2snn.deploy import to_spikingjelly
    from ann2snn.models import create_model

    x = images(2)
    cif = convert(create_model("cnn", act="clipq", levels=4, image_size=8), "cif")
    with pytest.raises(
        ValueError, match="SpikingJelly: its IF neuron runs IF and group neurons.*ConsistentIF"
    ):
        to_spikingjelly(cif, x[..., :8, :8])
    cos = calibrate(convert(make_vgg(), "if"), None, T=2, method="cos")
    with pytest.raises(ValueError, match="SpikingJelly export: this network uses offset-spike"):
        to_spikingjelly(cos, x)
