"""The rule table: what each op of a captured graph is to conversion.

One table, read three ways:

* `ann2snn.check` turns each op's kind into a status (stateless / neuron / spiking-pool /
  unsupported) with the fix for what does not convert;
* `ann2snn.prepare` gives every ReLU-like site a quantized activation of its own and
  turns max-pooling into average pooling;
* `ann2snn.convert` gives every activation site a spiking neuron and, for neurons that
  allow it, every max-pool a spiking pool (`ann2snn.LIPool`).

Kinds: ``quantized`` (an activation that declares a `SpikeSpec`), ``relu`` (ReLU-like,
with a fixed clip value or none), ``maxpool``, ``stateless`` (linear over time, reused
every step: conv, linear, BatchNorm, average pooling, additions, reshapes, and tensor
metadata such as ``x.shape`` and ``torch._assert``), ``spiking`` (already spiking) and
``unsupported``. The first rule that matches a node decides; a node no rule matches is
unsupported, with a generic fix.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..nn.activations import is_quantized_activation
from ..nn.state import is_stateful_module

__all__ = [
    "Rule",
    "Match",
    "RULES",
    "classify",
    "QUANTIZED",
    "RELU",
    "MAXPOOL",
    "STATELESS",
    "SPIKING",
    "UNSUPPORTED",
    "ACTIVATION_KINDS",
    "pool_arguments",
    "lipool_geometry",
    "function_name",
]

QUANTIZED, RELU, MAXPOOL = "quantized", "relu", "maxpool"
STATELESS, SPIKING, UNSUPPORTED = "stateless", "spiking", "unsupported"
#: Kinds a spiking neuron replaces.
ACTIVATION_KINDS = (QUANTIZED, RELU)

RETRAIN_FIX = "prepare(model, act='qcfs') swaps ReLUs only; replace it by a ReLU and retrain"


@dataclass(frozen=True)
class Rule:
    """One row of the table.

    A rule matches a ``call_module`` node whose module is an instance of ``modules``, a
    ``call_function`` node whose target is in ``functions``, or a ``call_method`` node
    whose method name is in ``methods``, and then only if ``when(node, module, meta)``
    (if given) is true. ``meta`` is the set of graph nodes that hold tensor metadata
    (shapes, sizes), not tensors. ``clip(node, module)`` gives a ReLU-like site's fixed
    upper clip (ReLU6: 6), or None.
    """

    name: str
    kind: str
    modules: tuple[type[nn.Module], ...] = ()
    functions: frozenset[Any] = frozenset()
    methods: frozenset[str] = frozenset()
    when: Callable[[fx.Node, nn.Module | None, set[fx.Node]], bool] | None = None
    clip: Callable[[fx.Node, nn.Module | None], float | None] | None = None
    fix: str = ""

    def matches(self, node: fx.Node, module: nn.Module | None, meta: set[fx.Node]) -> bool:
        if node.op == "call_module":
            hit = isinstance(module, self.modules) if self.modules else False
        elif node.op == "call_function":
            hit = node.target in self.functions
        elif node.op == "call_method":
            hit = node.target in self.methods
        else:
            return False
        return hit and (self.when is None or self.when(node, module, meta))


@dataclass(frozen=True)
class Match:
    """A graph node, the rule that decided it, and the module it calls (if any)."""

    node: fx.Node
    rule: Rule
    module: nn.Module | None

    @property
    def kind(self) -> str:
        return self.rule.kind

    @property
    def name(self) -> str:
        """Qualified module name, or the graph node's name for functions and methods."""
        return str(self.node.target) if self.node.op == "call_module" else self.node.name

    @property
    def op(self) -> str:
        """Display name: ``Conv2d``, ``F.relu``, ``Tensor.view``."""
        if self.module is not None:
            return type(self.module).__name__
        if self.node.op == "call_method":
            return f"Tensor.{self.node.target}"
        return function_name(self.node.target)

    @property
    def clip(self) -> float | None:
        """Fixed clip value of a ReLU-like site (None: unbounded)."""
        return self.rule.clip(self.node, self.module) if self.rule.clip else None


def function_name(target: Any) -> str:
    """``F.relu``, ``torch.flatten``, ``operator.add`` for a function target."""
    mod = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod == "_operator":
        return f"operator.{name}"
    if mod == "builtins":
        return name
    return f"torch.{name}" if mod.startswith("torch") else name


# ----------------------------------------------------------------------------- guards


def _number(a: Any) -> bool:
    return isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)


def _arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    return node.kwargs.get(key, node.args[i] if len(node.args) > i else default)


def _clamp_bounds(node: fx.Node) -> tuple[Any, Any]:
    if node.target in (torch.clamp_min, "clamp_min", "clamp_min_"):
        return _arg(node, 1, "min"), None
    return _arg(node, 1, "min"), _arg(node, 2, "max")


def _clamp_is_relu(node: fx.Node, _m: nn.Module | None, _meta: set[fx.Node]) -> bool:
    lo, hi = _clamp_bounds(node)
    return _number(lo) and lo == 0 and (hi is None or (_number(hi) and hi > 0))


def _hardtanh_bounds(node: fx.Node, m: nn.Module | None) -> tuple[Any, Any]:
    if m is not None:
        return m.min_val, m.max_val
    return _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)


def _hardtanh_is_relu(node: fx.Node, m: nn.Module | None, _meta: set[fx.Node]) -> bool:
    lo, hi = _hardtanh_bounds(node, m)
    return lo == 0 and _number(hi) and hi > 0


def _tensor_args(node: fx.Node, meta: set[fx.Node]) -> list[fx.Node]:
    """The node's inputs that carry tensors (graph nodes that are not metadata)."""
    return [a for a in node.all_input_nodes if a not in meta]


def _all_meta(node: fx.Node, _m: nn.Module | None, meta: set[fx.Node]) -> bool:
    return not _tensor_args(node, meta)


def _is_meta_getattr(node: fx.Node, _m: nn.Module | None, meta: set[fx.Node]) -> bool:
    return _arg(node, 1, "name") in _META_ATTRS or _all_meta(node, _m, meta)


def _scaled(node: fx.Node, _m: nn.Module | None, meta: set[fx.Node]) -> bool:
    """At most one tensor operand (x·c, x/c); a division by a tensor is not linear."""
    tensors = _tensor_args(node, meta)
    if node.target in (operator.truediv, torch.div, "div", "div_"):
        divisor = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        if isinstance(divisor, fx.Node) and divisor not in meta:
            return False
    return len(tensors) <= 1


def _not_running_stats(_n: fx.Node, m: nn.Module | None, _meta: set[fx.Node]) -> bool:
    return not m.track_running_stats or m.running_mean is None


# ----------------------------------------------------------------------------- the table

_META_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}
_META_METHODS = {"size", "dim", "numel", "ndimension", "nelement", "get_device"}
_COMPARISONS = {
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.floordiv,
    operator.mod,
    operator.not_,
    operator.and_,
    operator.or_,
    operator.truth,
    len,
    int,
    float,
    bool,
}
_CLAMP_FUNCS = frozenset({torch.clamp, torch.clip, torch.clamp_min})
_CLAMP_METHODS = frozenset({"clamp", "clip", "clamp_min", "clamp_", "clip_", "clamp_min_"})
_MAXPOOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_MAXPOOL_FUNCS = frozenset(
    {
        F.max_pool1d,
        F.max_pool2d,
        F.max_pool3d,
        F.adaptive_max_pool1d,
        F.adaptive_max_pool2d,
        F.adaptive_max_pool3d,
    }
)
_STATELESS_MODULES = (
    nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd,
    nn.Identity, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad2d,
)  # fmt: skip
# Functions linear in their tensor inputs (or pure shape bookkeeping): reused every step.
_LINEAR_FUNCS = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.pos,
    operator.getitem, torch.add, torch.sub, torch.neg, torch.cat, torch.concat, torch.stack,
    torch.flatten, torch.reshape, torch.mean, torch.sum, torch.narrow, torch.squeeze,
    torch.unsqueeze, torch.transpose, torch.permute, torch.chunk, torch.split,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.dropout, F.dropout2d, F.linear, F.conv1d, F.conv2d, F.conv3d,
    F.pad, F.batch_norm, F.pixel_shuffle, F.pixel_unshuffle, getattr,
})  # fmt: skip
_LINEAR_METHODS = frozenset({
    "view", "reshape", "flatten", "mean", "sum", "add", "add_", "sub", "sub_", "neg",
    "permute", "transpose", "contiguous", "unsqueeze", "squeeze", "chunk", "split", "expand",
    "expand_as", "view_as", "reshape_as", "narrow", "to", "float", "half", "bfloat16",
    "type_as", "clone", "unflatten",
})  # fmt: skip
_SCALAR_FUNCS = frozenset(
    {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
)
_SCALAR_METHODS = frozenset({"mul", "mul_", "div", "div_"})
_PER_SAMPLE_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)

RULES: list[Rule] = [
    Rule("spiking module", SPIKING, modules=(nn.Module,),
         when=lambda n, m, _: is_stateful_module(m), fix="the model is already spiking"),
    Rule("quantized activation", QUANTIZED, modules=(nn.Module,),
         when=lambda n, m, _: is_quantized_activation(m)),
    Rule("relu", RELU, modules=(nn.ReLU,),
         functions=frozenset({F.relu, F.relu_, torch.relu, torch.relu_}),
         methods=frozenset({"relu", "relu_"})),
    Rule("relu6", RELU, modules=(nn.ReLU6,), functions=frozenset({F.relu6}),
         clip=lambda n, m: 6.0),
    Rule("hardtanh(0, c)", RELU, modules=(nn.Hardtanh,), functions=frozenset({F.hardtanh}),
         when=_hardtanh_is_relu, clip=lambda n, m: float(_hardtanh_bounds(n, m)[1])),
    Rule("clamp(min=0[, max=c])", RELU, functions=_CLAMP_FUNCS, methods=_CLAMP_METHODS,
         when=_clamp_is_relu,
         clip=lambda n, m: None if _clamp_bounds(n)[1] is None else float(_clamp_bounds(n)[1])),
    Rule("other clamp", UNSUPPORTED, modules=(nn.Hardtanh,),
         functions=_CLAMP_FUNCS | {F.hardtanh}, methods=_CLAMP_METHODS,
         fix="only clamp(min=0[, max=c>0]) converts (a ReLU with an optional clip)"),
    Rule("max pooling", MAXPOOL, modules=_MAXPOOL_MODULES, functions=_MAXPOOL_FUNCS),
    Rule("batch norm without running statistics", UNSUPPORTED,
         modules=(nn.modules.batchnorm._BatchNorm,), when=_not_running_stats,
         fix="each image's output would depend on the rest of its batch; use "
             "track_running_stats=True and retrain (or set running statistics)"),
    Rule("weighted or linear layer", STATELESS, modules=_STATELESS_MODULES),
    Rule("per-sample normalisation", UNSUPPORTED, modules=_PER_SAMPLE_NORMS,
         fix="per-sample normalisation has no spiking equivalent; use BatchNorm and retrain"),
    Rule("softmax", UNSUPPORTED, modules=(nn.Softmax, nn.LogSoftmax),
         functions=frozenset({F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}),
         methods=frozenset({"softmax", "log_softmax"}),
         fix="drop the softmax: the SNN's accumulated output is read by argmax"),
    # Tensor metadata (timm's shape assertions, x.shape[0], x.size(1)): no tensor flows.
    Rule("tensor metadata", STATELESS, functions=frozenset({torch._assert}),
         methods=frozenset(_META_METHODS)),
    Rule("tensor metadata", STATELESS, functions=frozenset({getattr}), when=_is_meta_getattr),
    Rule("shape arithmetic", STATELESS, functions=frozenset(_COMPARISONS) | _LINEAR_FUNCS
         | _SCALAR_FUNCS, when=_all_meta),
    Rule("linear function", STATELESS, functions=_LINEAR_FUNCS, methods=_LINEAR_METHODS),
    Rule("scaling by a constant", STATELESS, functions=_SCALAR_FUNCS, methods=_SCALAR_METHODS,
         when=_scaled),
    Rule("product of signals", UNSUPPORTED, functions=_SCALAR_FUNCS, methods=_SCALAR_METHODS,
         fix="a product of two spiking signals is not linear over time; multiply by "
             "constants only"),
]  # fmt: skip

_META_PRODUCERS = {"tensor metadata", "shape arithmetic"}


def _fallback(node: fx.Node, module: nn.Module | None) -> Rule:
    if module is None:
        op = f"Tensor.{node.target}" if node.op == "call_method" else function_name(node.target)
        return Rule("no rule", UNSUPPORTED, fix=f"no conversion rule for {op}: {RETRAIN_FIX}")
    op = type(module).__name__
    if not list(module.parameters(recurse=False)) and not list(module.children()):
        fix = f"no spiking equivalent of {op}: {RETRAIN_FIX}"
    else:
        fix = (
            f"no conversion rule for {op}; express it with Conv/Linear/BatchNorm/AvgPool "
            "and a supported activation"
        )
    return Rule("no rule", UNSUPPORTED, fix=fix)


_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def pool_arguments(match: Match) -> dict[str, Any] | None:
    """Geometry of a (non-adaptive) max-pool site, module or function: ``kernel_size``,
    ``stride``, ``padding``, ``dilation``, ``ceil_mode``; None for adaptive pools and
    for pools that return indices."""
    node, m = match.node, match.module
    if m is not None:
        if not isinstance(m, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
            return None
        values = {k: getattr(m, k) for k in _POOL_ARGS}
    elif node.target in (F.max_pool1d, F.max_pool2d, F.max_pool3d):
        defaults = (None, None, 0, 1, False, False)
        values = {k: _arg(node, i + 1, k, d) for i, (k, d) in enumerate(zip(_POOL_ARGS, defaults))}
        if values["stride"] is None or values["stride"] == []:
            values["stride"] = values["kernel_size"]
    else:
        return None
    if values.pop("return_indices") or any(isinstance(v, fx.Node) for v in values.values()):
        return None
    return values


def lipool_geometry(match: Match) -> dict[str, Any] | None:
    """`pool_arguments` of a 2-d max-pool (what `ann2snn.LIPool` expresses), else None."""
    is_2d = isinstance(match.module, nn.MaxPool2d) or match.node.target is F.max_pool2d
    return pool_arguments(match) if is_2d else None


def classify(gm: fx.GraphModule) -> Iterator[Match]:
    """Every op node of ``gm`` in graph order with the rule that decides it."""
    modules = dict(gm.named_modules())
    meta: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        rule = next((r for r in RULES if r.matches(node, module, meta)), None)
        rule = rule or _fallback(node, module)
        if rule.name in _META_PRODUCERS:
            meta.add(node)
        yield Match(node, rule, module)
