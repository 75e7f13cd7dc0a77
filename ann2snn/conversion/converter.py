"""ANN → SNN conversion: capture the graph, run the conversion passes, calibrate.

``convert(model, neuron="if")`` checks every op (`ann2snn.check`; if anything is not
supported, `ConversionError` lists every offending op before anything is built),
captures a copy of the model's graph with ``torch.fx`` (so ``nn.ReLU``, ``F.relu``,
``torch.relu``, ``clamp(min=0)`` and quantized activations are all seen), and runs the
passes of `ann2snn.conversion.passes` on it: fold BatchNorm (neurons that sleep), spiking
max-pools (neurons that allow them), one neuron per activation site, verification. Each
neuron's threshold is the activation's λ (its `SpikeSpec`), its clip value (ReLU6,
clamp(0, c)), or the 99.9th percentile of its outputs on calibration data (plain ReLU).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._util import percentile_value
from ..nn.network import SpikingNetwork, device_of
from ..nn.neurons import SpikingNeuron, neuron_class
from ._graph import NotTraceableError, capture
from .passes import Pass, PassContext, conversion_passes, fold_batchnorm, resolve_passes, run_passes
from .support import (
    ConversionError,
    OpReport,
    SupportReport,
    check,
    raise_unsupported,
    report_graph,
)
from .thresholds import record_percentiles

__all__ = ["convert", "check", "fold_bn", "ConversionError", "SupportReport", "OpReport"]


def fold_bn(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every BatchNorm that directly follows a Conv or
    Linear (whose output nothing else uses) folded into it. Exact in eval mode."""
    gm = capture(model).eval()
    return fold_batchnorm(gm, PassContext())


def _match_precision(snn: SpikingNetwork, model: nn.Module) -> None:
    """Neurons' thresholds in the model's state dtype: a float64 model gives a float64
    network throughout (a θ rounded through float32 would move quantization boundaries)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if torch.float64 not in dtypes:
        return
    for _, n in snn.spiking_layers():
        n.threshold = n.threshold.to(torch.float64)
        if n.v_offset is not None:
            n.v_offset = n.v_offset.to(torch.float64)


def _neuron_options(cls: type[SpikingNeuron], name: str, options: dict[str, Any]) -> None:
    """Refuse options the neuron's constructors do not take, naming the allowed ones."""
    allowed = set()
    for fn in (cls.__init__, cls.from_activation, cls.from_threshold):
        params = inspect.signature(fn).parameters.values()
        allowed |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    allowed -= {"self", "cls", "act", "threshold", "v_init"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"neuron {name!r} takes no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(sorted(allowed)) or 'none'} (and v_init)"
        )


def convert(
    model: nn.Module,
    neuron: str = "if",
    *,
    calibration: Any = None,
    percentile: float = 99.9,
    calibration_batches: int = 10,
    fold_batchnorm: bool | None = None,
    v_init: float | None = None,
    passes: Sequence[str | Pass] | None = None,
    **neuron_options: Any,
) -> SpikingNetwork:
    """Convert a trained ANN into a `SpikingNetwork`; ``model`` is never modified.

    Args:
        model: the ANN (quantized activations, e.g. from `ann2snn.prepare`, or plain ReLU
            with ``calibration``); must be traceable by ``torch.fx``.
        neuron: a registered neuron (`ann2snn.list_neurons`): ``"if"`` (QCFS IF),
            ``"gn"`` (group neuron, option ``tau``, default the activation's L),
            ``"cif"`` (consistent IF, options ``gamma``, ``negative_spikes``;
            2-d max-pooling becomes `LIPool`), or your own (`ann2snn.register_neuron`).
        calibration: data for plain-ReLU layers (DataLoader, tensor or (x, y)); each such
            layer's threshold is the ``percentile`` of its activations.
        fold_batchnorm: fold BN into the preceding conv/linear (exact in eval). Default:
            the neuron's ``folds_batchnorm`` (on for ``"cif"``: sleep phases zero biases).
        v_init: initial membrane as a fraction of θ (per neuron quantum for GN). Default:
            the activation's shift (½ for QCFS, 0 for clip-quant), 0 for plain ReLU.
        passes: the graph passes to run (names of `ann2snn.conversion.passes.PASSES` or your own
            ``fn(gm, ctx)``); default `ann2snn.conversion.passes.conversion_passes(neuron)`.
        neuron_options: passed to the neuron's ``from_activation`` / ``from_threshold``.

    Raises:
        ConversionError: listing every unsupported op with its fix (or why the model could
            not be traced), before anything runs.
    """
    neuron_cls = neuron_class(neuron)
    _neuron_options(neuron_cls, neuron, neuron_options)
    percentile_value("percentile", percentile)
    # One capture serves the support check and the passes.
    try:
        gm = capture(model).eval()
    except NotTraceableError as e:
        raise ConversionError(f"cannot convert: {e}; nothing was changed") from None
    raise_unsupported(report_graph(gm, neuron_cls))
    device = device_of(model)
    names = list(passes) if passes is not None else conversion_passes(neuron_cls, fold_batchnorm)
    ctx = PassContext(neuron, neuron_cls, dict(neuron_options), v_init)
    gm = run_passes(gm, names, ctx)
    config = {
        "neuron": neuron,
        "fold_batchnorm": any(n == "fold_batchnorm" for n, _ in resolve_passes(names)),
        "passes": [n for n, _ in resolve_passes(names)],
        "calibrated_layers": len(ctx.uncalibrated),
        "percentile": percentile if ctx.uncalibrated else None,
        **{k: v for k, v in neuron_options.items() if isinstance(v, int | float | bool | str)},
    }
    snn = SpikingNetwork(gm, neuron, ctx.layers, config).to(device).eval()
    _match_precision(snn, model)
    if ctx.uncalibrated:
        if calibration is None:
            raise ConversionError(
                f"plain ReLU layers ({', '.join(ctx.uncalibrated)}) have no learned threshold: "
                "pass calibration data, e.g. convert(model, calibration=val_loader), or "
                "prepare(model, act='qcfs') and train"
            )
        todo = [snn.body.get_submodule(name) for name in ctx.uncalibrated]
        try:
            values = record_percentiles(
                snn.ann_forward, todo, calibration, percentile, calibration_batches, device
            )
        except ValueError as e:
            raise ConversionError(f"calibration: {e}") from None
        with torch.no_grad():
            for n, p in zip(todo, values):
                # A dead layer (all outputs 0) still needs a positive threshold; it never fires.
                n.threshold.fill_(p if p > 0 else 1.0)
    return snn
