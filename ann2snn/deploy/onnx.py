"""ONNX and ``torch.export`` of a converted network, with T steps inside the graph.

A `SpikingNetwork` keeps its membranes between calls, so what is exported is one whole
simulation: `Unrolled` resets the state, runs T steps (the input repeated — static
images, as `ann2snn.simulate` does — or a time-major ``[T, B, ...]`` input when
``time_input=True``) and returns the per-step outputs ``[T, B, out...]``, from which the
answer after any t ≤ T is the mean of the first t. The batch dimension is dynamic; T is
fixed by the export (the loop is unrolled: T copies of each neuron's step).

Sleep phases (CASC) zero the biases between steps, which an exported graph cannot do;
they are refused here (the NIR export carries the schedule in its metadata).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from .._util import positive_int
from ..nn.network import SpikingNetwork
from .binary import binarize, is_binarized

__all__ = ["Unrolled", "export_onnx", "export_program", "EXPORT_FORMATS"]

#: Formats of `ann2snn export` (the CLI).
EXPORT_FORMATS = ("nir", "onnx", "torch")


class Unrolled(nn.Module):
    """One simulation of ``T`` steps as a stateless module: ``[B, ...]`` (or ``[T, B, ...]``
    with ``time_input``) → per-step outputs ``[T, B, out...]``."""

    def __init__(self, snn: SpikingNetwork, T: int, time_input: bool = False):
        super().__init__()
        if not isinstance(snn, SpikingNetwork):
            raise TypeError(f"Unrolled: snn must be a SpikingNetwork, got {type(snn).__name__}")
        self.snn = snn
        self.T = positive_int("T", T)
        self.time_input = bool(time_input)

    def forward(self, x: Tensor) -> Tensor:
        self.snn.reset()
        if self.time_input:
            torch._check(x.shape[0] == self.T)
            seq = x
        else:
            seq = x.unsqueeze(0).expand(self.T, *x.shape)
        out = self.snn(seq)  # [T, B, out...]
        self.snn.reset()
        return out


def _prepared(snn: SpikingNetwork, example: Tensor, T: int, time_input: bool, binary: bool):
    net = binarize(snn, example) if binary and not is_binarized(snn) else copy.deepcopy(snn)
    # Inference only: the neurons' in-place kernels take no gradient, so the exported
    # program must not ask for one.
    net.requires_grad_(False)
    module = Unrolled(net, T, time_input).eval()
    x = example.unsqueeze(0).expand(T, *example.shape).contiguous() if time_input else example
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dims = {"x": {1: batch} if time_input else {0: batch}}
    return module, x, dims


def export_program(
    snn: SpikingNetwork,
    example: Tensor,
    T: int,
    path: str | Path | None = None,
    time_input: bool = False,
    binary: bool = False,
) -> torch.export.ExportedProgram:
    """``torch.export`` of a T-step simulation (dynamic batch); saved to ``path``
    (``.pt2``, `torch.export.save`) if given. ``binary``: export the deploy form
    (`ann2snn.binarize`)."""
    module, x, dims = _prepared(snn, example, T, time_input, binary)
    with torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes=dims)
    if path is not None:
        torch.export.save(program, str(path))
    return program


def export_onnx(
    snn: SpikingNetwork,
    path: str | Path,
    example: Tensor,
    T: int,
    time_input: bool = False,
    binary: bool = False,
) -> Path:
    """Write a T-step simulation of ``snn`` as ONNX (dynamic batch; input ``x``, output
    the per-step outputs ``[T, B, out...]``). Needs the ``onnx`` and ``onnxscript``
    packages (``pip install 'ann2snn[export]'``)."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'ann2snn[export]'") from e  # fmt: skip
    module, x, dims = _prepared(snn, example, T, time_input, binary)
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_shapes=dims, dynamo=True, verbose=False)  # fmt: skip
    return path


def example_input(record: dict, data_dir: str | None = None) -> Tensor:
    """Two zero images ``[2, C, H, W]`` of the run's input shape (from its record, else
    from its dataset's validation split). Two, not one: `torch.export` fixes a
    dimension of size 1, and the batch must stay dynamic."""
    mk = record.get("model_kwargs") or {}
    size, channels = mk.get("image_size"), mk.get("in_channels")
    if size and channels:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return torch.zeros(2, int(channels), *hw)
    from ..data import create_loaders

    dataset = (record.get("recipe") or {}).get("dataset") or record.get("dataset")
    loaders = create_loaders(dataset, data_dir=data_dir, batch_size=2, augment=False)
    x, _ = next(iter(loaders.val if loaders.val is not None else loaders.test))
    return torch.zeros_like(x[:2]).cpu()


def export_run(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    T: int,
    neuron: str = "if",
    binary: bool = False,
    sleep: int = 0,
    time_input: bool = False,
    data_dir: str | None = None,
    **neuron_options,
) -> tuple[Path, list[str]]:
    """What ``ann2snn export`` does: load a trained run, convert it with ``neuron`` and
    write it as ``fmt`` (``nir``, ``onnx`` or ``torch``) to ``out``. Returns the path and
    the warnings (for NIR: what other readers lose)."""
    from ..checkpoint import load
    from ..conversion.converter import convert
    from .nir import export_nir

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    positive_int("T", T)
    model = load(checkpoint, map_location="cpu")
    record = model.ann2snn_record
    act = (record.get("model_kwargs") or {}).get("act") or record.get("activation")
    calibration = None
    if act == "relu":  # θ from data: the 99.9th percentile on the validation split
        from ..data import create_loaders

        dataset = (record.get("recipe") or {}).get("dataset")
        calibration = create_loaders(dataset, data_dir=data_dir, batch_size=256, augment=False).val
    snn = convert(model, neuron, calibration=calibration, **neuron_options)
    example = example_input(record, data_dir)
    out = Path(out)
    if sleep and fmt != "nir":
        raise ValueError(f"export: --sleep {sleep} is carried by NIR only (an exported {fmt} graph cannot switch biases off)")  # fmt: skip
    if fmt == "nir":
        return out, export_nir(snn, out, example, sleep=sleep)
    if fmt == "onnx":
        return export_onnx(snn, out, example, T, time_input, binary), []
    export_program(snn, example, T, out, time_input, binary)
    return out, []
