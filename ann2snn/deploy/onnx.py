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

import contextlib
import copy
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from .._io import staged_output
from .._util import positive_int
from ..nn.network import SpikingNetwork
from .binary import binarize, is_binarized, refuse_presimulation

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


#: The most steps an exported graph unrolls: its size and the export time grow with T (at
#: 100,000 steps the export ran for minutes while memory grew). A NIR file runs any T.
MAX_UNROLLED_T = 1024


def _prepared(snn: SpikingNetwork, example: Tensor, T: int, time_input: bool, binary: bool):
    positive_int("T", T)
    refuse_presimulation(snn, "ONNX/torch.export")
    if T > MAX_UNROLLED_T:
        raise ValueError(
            f"T={T}: an ONNX or torch.export graph unrolls every step, at most "
            f"{MAX_UNROLLED_T}; export NIR (any T at run time) or unroll fewer steps"
        )
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
        with staged_output(path) as tmp:
            torch.export.save(program, str(tmp))
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
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'ann2snn[export]'"
        ) from e
    module, x, dims = _prepared(snn, example, T, time_input, binary)
    path = Path(path)
    # One self-contained file where protobuf allows it (< 2 GB): the weights inside. Above
    # that they go to ``<name>.onnx.data`` beside it, which must travel with the file.
    external = _state_bytes(module) > ONNX_INLINE_LIMIT
    with torch.no_grad(), staged_output(path) as tmp, _quiet_constant_folding():
        torch.onnx.export(
            module,
            (x,),
            str(tmp),
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=dims,
            dynamo=True,
            verbose=False,
            external_data=external,
        )
    return path


#: Weights above this many bytes go to a side file (protobuf's limit is 2 GiB).
ONNX_INLINE_LIMIT = 1_800_000_000


def onnx_side_file(path: str | Path) -> Path | None:
    """The ``.data`` file an ONNX export wrote beside ``path`` (None: weights inside)."""
    side = Path(str(path) + ".data")
    return side if side.exists() else None


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@contextlib.contextmanager
def _quiet_constant_folding():
    """onnxscript's constant folder logs a warning for every neuron whose scalar θ it cannot
    merge with the broadcast shape it meets (harmless: the shape stays as it was); keep the
    export's output to what matters."""
    log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
