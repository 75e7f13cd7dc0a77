"""The ANN-vs-SNN gap, measured one way: one ANN pass through the converted graph and one
simulation of the schedule, each layer observed by forward hooks.

Every measurement of how far the spiking network is from its ANN goes through the two
functions here: `compare` (diagnostics), post-conversion calibration
(`ann2snn.calibration.calibrate`) and NQ's noise estimate (`calibrate_noise`). Neurons
know nothing of it: the hooks read the public `Stateful` contract (``unfold``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._util import finite_input
from ..nn.network import SpikingNetwork, device_of, eval_mode
from ..nn.state import state_dtype
from .schedule import Schedule, check_snn, default_max_fold, run_schedule

__all__ = ["ann_activations", "spike_rates", "compare", "LayerDiff"]


def _acc(t: Tensor) -> Tensor:
    """``t`` in the dtype gaps are measured in: fp32, or fp64 for a fp64 network."""
    return t.to(state_dtype(t.dtype))


def ann_activations(snn: SpikingNetwork, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The network run as its source ANN on one batch ``x`` ``[B, ...]``: every neuron
    layer's activation (``{name: [B, ...]}``, fp32) and the output ``[B, out...]`` (fp32).
    The network's state is untouched."""
    acts: dict[str, Tensor] = {}
    handles = [
        n.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, _acc(o)))
        for name, n in snn.spiking_layers()
    ]
    try:
        out = _acc(snn.ann_forward(x))
    finally:
        for h in handles:
            h.remove()
    return acts, out


def spike_rates(
    snn: SpikingNetwork, x: Tensor, schedule: Schedule, max_fold: int | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """One simulation of ``schedule`` on one batch ``x`` from the reset state: every neuron
    layer's emitted sum over all steps (wake and sleep) per wake step (``{name: [B, ...]}``,
    fp32, comparable with its ANN activation), and the output summed over all steps per
    wake step ``[B, out...]``. The network is reset before and after."""
    layers = list(snn.spiking_layers())
    sums: dict[str, Tensor] = {}

    def hook(name: str):
        def add(module: nn.Module, _inp: object, out: Tensor) -> None:
            emitted = _acc(module.unfold(out)).sum(0)  # [B, ...] this call's steps
            sums[name] = emitted if name not in sums else sums[name] + emitted

        return add

    handles = [n.register_forward_hook(hook(name)) for name, n in layers]
    max_fold = max_fold or default_max_fold(device_of(snn))
    snn.reset()
    try:
        total = sum(_acc(o).sum(0) for o in run_schedule(snn, x, schedule, max_fold))
    finally:
        for h in handles:
            h.remove()
        snn.reset()
    rates = {name: sums[name] / schedule.wake for name, _ in layers}
    return rates, total / schedule.wake


@dataclass
class LayerDiff:
    """How far one layer's SNN rate is from its ANN activation."""

    name: str
    mean_abs: float
    max_abs: float

    def __str__(self) -> str:
        return f"{self.name:<28} mean |Δ| {self.mean_abs:.4g}   max |Δ| {self.max_abs:.4g}"


@torch.no_grad()
def compare(
    ann: nn.Module,
    snn: SpikingNetwork,
    x: Tensor,
    T: int,
    sleep: int = 0,
    margin: int | None = None,
) -> list[LayerDiff]:
    """Per converted layer (execution order) and for the output: mean and max of
    |SNN mean output over T wake steps − ANN activation|, on one batch ``x``.

    The ANN activations come from ``ann`` evaluated through the converted graph in ANN
    mode (identical to ``ann(x)``; checked on the output).
    """
    check_snn(snn)
    finite_input(x, "compare")
    with eval_mode(ann, snn):
        return _compare(ann, snn, x, Schedule(T, sleep, margin))


def _compare(ann: nn.Module, snn: SpikingNetwork, x: Tensor, schedule: Schedule) -> list[LayerDiff]:
    x = x.to(device_of(snn))
    ann_acts, ann_out = ann_activations(snn, x)
    ref = _acc(ann.to(x.device)(x))
    if not torch.allclose(ref, ann_out, rtol=1e-4, atol=1e-4 * (1 + ref.abs().max().item())):
        raise ValueError("ann and snn disagree in ANN mode: was snn converted from this ann?")
    rates, snn_out = spike_rates(snn, x, schedule)
    diffs = [LayerDiff(name, *_abs_stats(rates[name] - ann_acts[name])) for name in rates]
    diffs.append(LayerDiff("output", *_abs_stats(snn_out - ann_out)))
    return diffs


def _abs_stats(d: Tensor) -> tuple[float, float]:
    a = d.abs()
    return float(a.mean()), float(a.max())
