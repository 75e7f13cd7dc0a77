"""ONNX (checked with onnxruntime) and torch.export of a T-step simulation."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_vgg

from ann2snn import Unrolled, convert, export_onnx, export_program


def _reference(snn, x, T):
    snn.reset()
    with torch.no_grad():
        out = snn(x.unsqueeze(0).expand(T, *x.shape))
    snn.reset()
    return out


@pytest.mark.parametrize("binary", [False, True])
def test_onnx_matches_the_snn_for_any_batch(tmp_path, binary):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    snn = convert(make_vgg(), "if")
    path = export_onnx(snn, tmp_path / "snn.onnx", images(2), T=3, binary=binary)
    # One self-contained file: it runs wherever it is copied, alone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snn.onnx"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    path = path.rename(moved / "copy.onnx")
    session = ort.InferenceSession(str(path))
    for batch in (1, 5):
        x = images(batch, seed=batch)
        got = session.run(None, {"x": x.numpy()})[0]
        ref = _reference(snn, x, 3)
        assert got.shape == (3, batch, 5)
        assert torch.allclose(torch.from_numpy(got), ref, atol=1e-5)


def test_torch_export_with_an_explicit_time_dimension(tmp_path):
    snn = convert(make_vgg(), "gn", tau=4)
    program = export_program(snn, images(2), T=2, path=tmp_path / "snn.pt2", time_input=True)
    loaded = torch.export.load(str(tmp_path / "snn.pt2"))
    x = images(6, seed=3)
    seq = x.unsqueeze(0).expand(2, *x.shape)
    ref = _reference(snn, x, 2)
    for prog in (program, loaded):
        assert torch.allclose(prog.module()(seq), ref, atol=1e-6)
    # The module form: state never leaks from one call to the next.
    unrolled = Unrolled(snn, 2).eval()
    assert torch.equal(unrolled(x), unrolled(x))
    with pytest.raises(ValueError, match="T"):
        Unrolled(snn, 0)


def test_onnx_export_prints_no_constant_folding_warnings(tmp_path, caplog):
    pytest.importorskip("onnxscript")
    import logging

    with caplog.at_level(logging.WARNING):
        export_onnx(convert(make_vgg(), "if"), tmp_path / "q.onnx", images(2), T=2)
    assert not [r for r in caplog.records if "Constant folder" in r.getMessage()]
