"""Graph passes: `prepare` and `convert` as short lists of named rewrites.

A pass is ``fn(gm: GraphModule, ctx: PassContext) -> GraphModule``: it rewrites the graph
it is given (the pipeline's own copy; the user's model is never touched) and returns it.
Every pass finds its sites through the one rule table (`ann2snn.conversion.rules.classify`), so no
rule is written twice. The pipelines, in order:

* `prepare` (ANN side): ``quantize_activations`` (every ReLU-like site gets a fresh
  quantized activation of its own) → ``average_pools`` (max-pooling → average pooling
  when ``pool="avg"``);
* `convert` (SNN side): ``fold_batchnorm`` (BatchNorm into the conv/linear before it;
  by default only for neurons that sleep) → ``spiking_pools`` (max-pooling → `LIPool`
  for neurons that allow it) → ``spiking_neurons`` (every activation site → a neuron) →
  ``verify_converted`` (nothing of the ANN's nonlinearity is left, and at least one
  neuron exists).

`ann2snn.convert(model, passes=[...])` runs another list (names from `PASSES`, or your
own functions); `conversion_passes(neuron)` gives the default one.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..nn.activations import create_activation
from ..nn.neurons import SpikingNeuron
from ..nn.pooling import LIPool
from ._graph import install, set_submodule
from .rules import (
    ACTIVATION_KINDS,
    MAXPOOL,
    QUANTIZED,
    RELU,
    SPIKING,
    STATELESS,
    classify,
    lipool_geometry,
    pool_arguments,
)
from .support import ConversionError

__all__ = [
    "PassContext",
    "Pass",
    "PASSES",
    "PREPARE_PASSES",
    "conversion_passes",
    "resolve_passes",
    "run_passes",
    "fold_batchnorm",
    "spiking_pools",
    "spiking_neurons",
    "verify_converted",
    "quantize_activations",
    "average_pools",
]


@dataclass
class PassContext:
    """What the passes of one `prepare` or `convert` call read and record."""

    # convert: the neuron and its options
    neuron: str | None = None
    neuron_cls: type[SpikingNeuron] | None = None
    neuron_options: dict[str, Any] = field(default_factory=dict)
    v_init: float | None = None
    # prepare: the activation and pooling
    act: str = "qcfs"
    levels: int = 4
    pool: str = "avg"
    act_kwargs: dict[str, Any] = field(default_factory=dict)
    # recorded by the passes
    layers: list[str] = field(default_factory=list)  # neurons / activations, graph order
    uncalibrated: list[str] = field(default_factory=list)  # neurons whose θ needs data
    caps: dict[str, float] = field(default_factory=dict)  # prepare: a ReLU6 site's clip
    folded: int = 0  # BatchNorms folded


Pass = Callable[[fx.GraphModule, PassContext], fx.GraphModule]


def _done(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.lint()
    gm.recompile()
    return gm


# ----------------------------------------------------------------------------- convert


def fold_batchnorm(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Fold every BatchNorm (with running statistics) that directly follows a Conv or
    Linear whose output nothing else uses into that layer. Exact in eval mode."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not node.args:
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer = modules[prev.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if isinstance(layer, nn.modules.conv._ConvNd) and not isinstance(
            layer, nn.modules.conv._ConvTransposeNd
        ):
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        set_submodule(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        ctx.folded += 1
    gm = _done(gm)
    gm.delete_all_unused_submodules()
    return gm


def spiking_pools(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Every 2-d max-pool → an `LIPool` of the same geometry (one per call site), for
    neurons that allow max-pooling (``allows_maxpool``); others are left for
    ``verify_converted`` to report."""
    if ctx.neuron_cls is None or not ctx.neuron_cls.allows_maxpool:
        return gm
    installed: set[str] = set()
    for match in list(classify(gm)):
        geometry = lipool_geometry(match) if match.kind == MAXPOOL else None
        if geometry is not None:
            install(gm, match.node, LIPool(**geometry), f"lipool_{match.node.name}", installed)
    return _done(gm)


def _neuron_for(match, ctx: PassContext) -> tuple[SpikingNeuron, bool]:
    """(neuron, needs a threshold from data) for one activation site."""
    opts = dict(ctx.neuron_options)
    if ctx.v_init is not None:
        opts["v_init"] = ctx.v_init
    cls = ctx.neuron_cls
    if match.kind == QUANTIZED:
        n = cls.from_activation(match.module, **opts)
        n.ann_activation = copy.deepcopy(match.module)
        return n, False
    clip = match.clip
    opts.setdefault("v_init", 0.0)  # a plain ReLU has no ½-shift
    n = cls.from_threshold(clip if clip is not None else 1.0, **opts)
    n.ann_activation = nn.ReLU() if clip is None else nn.Hardtanh(0.0, clip)
    return n, clip is None


def spiking_neurons(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Every activation site → a neuron of ``ctx.neuron_cls`` (one per call site): θ from
    the activation's `SpikeSpec`, or a ReLU's clip value; plain ReLUs are listed in
    ``ctx.uncalibrated`` (their θ comes from calibration data)."""
    if ctx.neuron_cls is None:
        raise ValueError("spiking_neurons needs PassContext.neuron_cls")
    installed: set[str] = set()
    for match in list(classify(gm)):
        if match.kind not in ACTIVATION_KINDS:
            continue
        neuron, needs_data = _neuron_for(match, ctx)
        name = install(gm, match.node, neuron, f"neuron_{match.node.name}", installed)
        ctx.layers.append(name)
        if needs_data:
            ctx.uncalibrated.append(name)
    return _done(gm)


def verify_converted(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Refuse a result that kept an ANN nonlinearity or has no neuron at all."""
    left = [m for m in classify(gm) if m.kind not in (STATELESS, SPIKING)]
    if left:
        listing = ", ".join(f"{m.op} at {m.name}" for m in left)
        raise ConversionError(f"conversion left ANN ops in the network: {listing}")
    if not any(isinstance(m, SpikingNeuron) for m in gm.modules()):
        raise ConversionError(
            "the model has no activation to convert (no ReLU, clamp(min=0) or quantized "
            "activation was found in its graph), so it has no spiking neuron"
        )
    return gm


# ----------------------------------------------------------------------------- prepare


def quantize_activations(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Every ReLU-like site (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu``,
    ``clamp(min=0)``, ``ReLU6``) → a fresh ``create_activation(ctx.act, ctx.levels,
    **ctx.act_kwargs)``, one per call site (each with its own λ). Existing quantized
    activations are kept. A clipped site's clip is recorded in ``ctx.caps``."""
    installed: set[str] = set()
    for match in list(classify(gm)):
        if match.kind == QUANTIZED:
            ctx.layers.append(match.name)
        if match.kind != RELU:
            continue
        act = create_activation(ctx.act, ctx.levels, **ctx.act_kwargs)
        name = install(gm, match.node, act, f"act_{match.node.name}", installed)
        ctx.layers.append(name)
        if match.clip is not None:
            ctx.caps[name] = match.clip
    return _done(gm)


_AVG_FOR_MAX = {
    nn.MaxPool1d: nn.AvgPool1d,
    nn.MaxPool2d: nn.AvgPool2d,
    nn.MaxPool3d: nn.AvgPool3d,
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}


def _dims(match) -> int:
    text = type(match.module).__name__ if match.module is not None else match.node.target.__name__
    return int(text.rstrip("d")[-1])


def average_pool_for(match) -> nn.Module | None:
    """The average pool with the geometry of a max-pool site, or None (dilated, or one
    that returns indices: no average pool has them)."""
    d = _dims(match)
    args = pool_arguments(match)
    if args is not None:
        dil = args["dilation"]
        if any(v != 1 for v in (dil if isinstance(dil, tuple | list) else (dil,))):
            return None
        avg = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[d]
        return avg(args["kernel_size"], args["stride"], args["padding"], args["ceil_mode"])
    if match.module is not None and type(match.module) in _AVG_FOR_MAX:
        if getattr(match.module, "return_indices", False):
            return None
        return _AVG_FOR_MAX[type(match.module)](match.module.output_size)
    node = match.node
    if "adaptive" in node.target.__name__:
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        if size is None or isinstance(size, fx.Node) or node.kwargs.get("return_indices"):
            return None
        return {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[d](size)
    return None


def average_pools(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """With ``ctx.pool == "avg"``: every max-pool → the average pool of the same geometry
    (one module per site). Raises `ConversionError` for max-pools no average pool can
    replace (dilated ones)."""
    if ctx.pool != "avg":
        return gm
    installed: set[str] = set()
    bad = []
    for match in list(classify(gm)):
        if match.kind != MAXPOOL:
            continue
        avg = average_pool_for(match)
        if avg is None:
            bad.append(f"{match.op} at {match.name}")
            continue
        install(gm, match.node, avg, f"avgpool_{match.node.name}", installed)
    if bad:
        raise ConversionError(
            f"pool='avg': no average pool replaces {', '.join(bad)} (dilated, or returns "
            "indices); use pool='max' and a neuron with a spiking max-pool"
        )
    return _done(gm)


# ----------------------------------------------------------------------------- pipelines

PASSES: dict[str, Pass] = {
    "fold_batchnorm": fold_batchnorm,
    "spiking_pools": spiking_pools,
    "spiking_neurons": spiking_neurons,
    "verify_converted": verify_converted,
    "quantize_activations": quantize_activations,
    "average_pools": average_pools,
}
PREPARE_PASSES: tuple[str, ...] = ("quantize_activations", "average_pools")


def conversion_passes(neuron_cls: type[SpikingNeuron], fold: bool | None = None) -> list[str]:
    """The names of the passes `convert` runs for ``neuron_cls`` (``fold``: fold
    BatchNorm; default the neuron's ``folds_batchnorm``)."""
    fold = neuron_cls.folds_batchnorm if fold is None else fold
    return (["fold_batchnorm"] if fold else []) + [
        "spiking_pools",
        "spiking_neurons",
        "verify_converted",
    ]


def resolve_passes(passes: Sequence[str | Pass]) -> list[tuple[str, Pass]]:
    """(name, function) for names from `PASSES` and user functions."""
    out = []
    for p in passes:
        if isinstance(p, str):
            if p not in PASSES:
                raise ValueError(f"passes: unknown pass {p!r}; choose from {', '.join(PASSES)}")
            out.append((p, PASSES[p]))
        elif callable(p) and len(inspect.signature(p).parameters) == 2:
            out.append((getattr(p, "__name__", repr(p)), p))
        else:
            raise TypeError(f"passes: expected a pass name or fn(gm, ctx), got {p!r}")
    return out


def run_passes(
    gm: fx.GraphModule, passes: Sequence[str | Pass], ctx: PassContext
) -> fx.GraphModule:
    """Run ``passes`` in order; a pass must return a `GraphModule`."""
    for name, fn in resolve_passes(passes):
        gm = fn(gm, ctx)
        if not isinstance(gm, fx.GraphModule):
            raise TypeError(f"pass {name!r} returned {type(gm).__name__}, not a GraphModule")
    return gm
