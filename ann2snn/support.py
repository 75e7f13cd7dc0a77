"""Support report: which ops of a model convert, and how.

`check(model, neuron)` captures the graph with ``torch.fx`` (a tracer that keeps quantized
activations and neurons as leaves and names the module that broke tracing; a module walk
when tracing fails) and classifies every op as ``stateless`` (reused at every step),
``neuron`` (an activation a spiking neuron replaces), ``spiking-pool`` or ``unsupported``,
with the fix for each unsupported op. `ann2snn.convert` runs the same check first, so
nothing is ever half-converted.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .activations import is_quantized_activation, relu_threshold_hint
from .neuron import SpikingNeuron, neuron_class
from .pooling import LIPool

__all__ = ["check", "ConversionError", "SupportReport", "OpReport"]


class ConversionError(ValueError):
    """The model cannot be converted; the message lists every problem and its fix."""


# ----------------------------------------------------------------------------- op tables

_STATELESS_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.ZeroPad2d,
)
_RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)

_NONLINEAR_FIX = "replace it by the model's quantized activation (act='qcfs') and retrain"
_UNSUPPORTED_MODULE_FIX: dict[type[nn.Module], str] = {
    nn.LayerNorm: "per-sample normalisation has no spiking equivalent; use BatchNorm and retrain",
    nn.GroupNorm: "per-sample normalisation has no spiking equivalent; use BatchNorm and retrain",
    nn.Softmax: "drop the softmax: the SNN's accumulated output is read by argmax",
}
_ACTIVATION_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.hardtanh}
_CLAMP_FUNCS = {torch.clamp, torch.clip, torch.clamp_min}
_ACTIVATION_METHODS = {"relu", "relu_"}
_CLAMP_METHODS = {"clamp", "clip", "clamp_min", "clamp_", "clamp_min_"}
_MAXPOOL_FUNCS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d}
# Functions linear in their tensor inputs (or pure shape bookkeeping): reused every step.
_LINEAR_FUNCS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.getitem,
    torch.add, torch.sub, torch.cat, torch.stack, torch.flatten, torch.reshape, torch.mean,
    torch.sum, torch.narrow, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.dropout, F.linear, F.conv1d, F.conv2d, F.conv3d, F.pad,
    F.batch_norm, getattr,
}  # fmt: skip
_SCALAR_FUNCS = {operator.mul, operator.imul, operator.truediv, torch.mul, torch.div}
_LINEAR_METHODS = {
    "view", "reshape", "flatten", "size", "mean", "sum", "add", "add_", "sub", "permute",
    "transpose", "contiguous", "unsqueeze", "squeeze", "dim", "chunk", "split", "expand",
    "expand_as", "view_as", "reshape_as", "narrow", "to", "float", "type_as", "clone",
}  # fmt: skip
_SCALAR_METHODS = {"mul", "mul_", "div", "div_"}


@dataclass
class OpReport:
    """One op of the graph: where it is, what it is, and what conversion does with it."""

    name: str  # qualified module name, or the graph node name for functions
    op: str  # e.g. "Conv2d", "F.relu", "Tensor.view"
    status: str  # "stateless" | "neuron" | "spiking-pool" | "unsupported"
    fix: str = ""


@dataclass
class SupportReport:
    """Every op of a model as supported or unsupported, from `check`."""

    ops: list[OpReport] = field(default_factory=list)
    traced: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[OpReport]:
        return [o for o in self.ops if o.status == "unsupported"]

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def __str__(self) -> str:
        width = max([len(o.name) for o in self.ops] + [4])
        lines = [f"{'name':<{width}}  {'op':<22} status"]
        for o in self.ops:
            line = f"{o.name:<{width}}  {o.op:<22} {o.status}"
            lines.append(line + (f"  -> {o.fix}" if o.fix else ""))
        lines += [f"note: {n}" for n in self.notes]
        verdict = "supported" if self.ok else f"{len(self.unsupported)} unsupported op(s)"
        lines.append(f"{len(self.ops)} ops, {verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "traced": self.traced,
            "ok": self.ok,
            "notes": self.notes,
            "ops": [o.__dict__ for o in self.ops],
        }


# ----------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """fx tracer that keeps quantized activations and neurons as leaves and remembers
    which module was being traced when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_quantized_activation(m) or isinstance(m, SpikingNeuron | LIPool):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.stack[-1] or "<root>"
            raise
        finally:
            self.stack.pop()


def _trace(model: nn.Module) -> tuple[fx.GraphModule | None, str | None]:
    """(GraphModule, None), or (None, reason naming the module that broke tracing)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure falls back to the module walk
        where = tracer.failed_at or "<root>"
        return (
            None,
            f"torch.fx could not trace the model at module '{where}': {type(e).__name__}: {e}",
        )
    return fx.GraphModule(model, graph, model.__class__.__name__), None


# ----------------------------------------------------------------------------- op classification


def _fn_name(target: Any) -> str:
    mod = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod == "_operator":
        return f"operator.{name}"
    return f"torch.{name}" if mod.startswith("torch") else name


def _is_scalar(a: Any) -> bool:
    return isinstance(a, int | float) and not isinstance(a, bool)


def _clamp_bounds(node: fx.Node) -> tuple[Any, Any]:
    """(min, max) of a clamp call node, by position or keyword."""
    args = list(node.args[1:])
    lo = node.kwargs.get("min", args[0] if args else None)
    hi = node.kwargs.get("max", args[1] if len(args) > 1 else None)
    return lo, hi


def _activation_kind(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, Any] | None:
    """Classify an activation node: ("quant", module) | ("relu", clip or None) | None."""
    if node.op == "call_module":
        m = modules[node.target]
        if is_quantized_activation(m):
            return "quant", m
        if isinstance(m, _RELU_MODULES):
            if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6) and m.min_val != 0.0:
                return None
            return "relu", relu_threshold_hint(m)
        return None
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCS:
        if node.target is F.relu6:
            return "relu", 6.0
        if node.target is F.hardtanh:
            lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
            hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
            return ("relu", float(hi)) if lo == 0 and _is_scalar(hi) else None
        return "relu", None
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS:
        return "relu", None
    is_clamp = (node.op == "call_function" and node.target in _CLAMP_FUNCS) or (
        node.op == "call_method" and node.target in _CLAMP_METHODS
    )
    if is_clamp:
        lo, hi = _clamp_bounds(node)
        if node.target in (torch.clamp_min, "clamp_min", "clamp_min_"):
            lo, hi = (node.args[1] if len(node.args) > 1 else node.kwargs.get("min")), None
        if lo == 0 and (hi is None or (_is_scalar(hi) and hi > 0)):
            return "relu", (float(hi) if hi is not None else None)
    return None


def _classify(
    node: fx.Node, modules: dict[str, nn.Module], neuron_cls: type[SpikingNeuron]
) -> OpReport | None:
    """Report for one graph node (None for placeholders/outputs/attributes)."""
    if node.op in ("placeholder", "output", "get_attr"):
        return None
    kind = _activation_kind(node, modules)
    if node.op == "call_module":
        m = modules[node.target]
        op = type(m).__name__
        if kind is not None:
            return OpReport(node.target, op, "neuron")
        if isinstance(m, _STATELESS_MODULES):
            return OpReport(node.target, op, "stateless")
        if isinstance(m, nn.MaxPool2d) and neuron_cls.allows_maxpool:
            return OpReport(node.target, op, "spiking-pool")
        if isinstance(m, _MAXPOOL_MODULES):
            fix = (
                f"build the model with pool='avg' before training, or convert with neuron='cif' "
                f"(lateral-inhibition pooling){'' if isinstance(m, nn.MaxPool2d) else ' after switching to nn.MaxPool2d'}"
            )
            return OpReport(node.target, op, "unsupported", fix)
        if isinstance(m, SpikingNeuron | LIPool):
            return OpReport(node.target, op, "unsupported", "the model is already spiking")
        fix = _UNSUPPORTED_MODULE_FIX.get(type(m))
        if fix is None:
            if isinstance(m, nn.Softmax | nn.LogSoftmax):
                fix = _UNSUPPORTED_MODULE_FIX[nn.Softmax]
            elif len(list(m.parameters(recurse=False))) == 0 and not list(m.children()):
                fix = f"no spiking equivalent of {op}: {_NONLINEAR_FIX}"
            else:
                fix = f"no conversion rule for {op}; express it with Conv/Linear/BatchNorm/AvgPool and a supported activation"
        return OpReport(node.target, op, "unsupported", fix)
    if node.op == "call_function":
        op = _fn_name(node.target)
        if kind is not None:
            return OpReport(node.name, op, "neuron")
        if node.target in _LINEAR_FUNCS:
            return OpReport(node.name, op, "stateless")
        if node.target in _SCALAR_FUNCS:
            tensors = [a for a in node.args if isinstance(a, fx.Node)]
            if len(tensors) <= 1 or (
                node.target in (operator.truediv, torch.div)
                and not isinstance(node.args[1], fx.Node)
            ):
                return OpReport(node.name, op, "stateless")
            return OpReport(
                node.name,
                op,
                "unsupported",
                "a product of two spiking signals is not linear over time; multiply by constants only",
            )
        if node.target in _MAXPOOL_FUNCS:
            return OpReport(
                node.name,
                op,
                "unsupported",
                "use nn.MaxPool2d (so neuron='cif' can swap it) or average pooling",
            )
        if node.target in _CLAMP_FUNCS:
            return OpReport(
                node.name,
                op,
                "unsupported",
                "only clamp(min=0[, max=c>0]) converts (a ReLU with an optional clip)",
            )
        return OpReport(
            node.name, op, "unsupported", f"no conversion rule for {op}: {_NONLINEAR_FIX}"
        )
    # call_method
    op = f"Tensor.{node.target}"
    if kind is not None:
        return OpReport(node.name, op, "neuron")
    if node.target in _LINEAR_METHODS:
        return OpReport(node.name, op, "stateless")
    if node.target in _SCALAR_METHODS and not any(isinstance(a, fx.Node) for a in node.args[1:]):
        return OpReport(node.name, op, "stateless")
    return OpReport(node.name, op, "unsupported", f"no conversion rule for {op}: {_NONLINEAR_FIX}")


def _walk_report(model: nn.Module, neuron_cls: type[SpikingNeuron], reason: str) -> SupportReport:
    """Support report from the module tree (tracing failed): leaf modules only."""
    report = SupportReport(
        traced=False,
        notes=[
            reason,
            "functional ops inside forward (F.relu, torch.relu, clamp) "
            "cannot be seen without tracing; make forward traceable or use nn modules",
        ],
    )
    graph = fx.Graph()
    for name, m in model.named_modules():
        if list(m.children()) and not is_quantized_activation(m):
            continue
        if name == "":
            continue
        node = graph.call_module(name)
        r = _classify(node, dict(model.named_modules()), neuron_cls)
        if r is not None:
            report.ops.append(r)
    return report


def check(model: nn.Module, neuron: str = "if") -> SupportReport:
    """Report every op of ``model`` as supported or unsupported for ``neuron``.

    Does not modify ``model``. Use ``str(report)`` for a table, ``report.unsupported``
    for the problems, each with its fix.
    """
    neuron_cls = neuron_class(neuron)
    gm, reason = _trace(model)
    if gm is None:
        return _walk_report(model, neuron_cls, reason)
    modules = dict(gm.named_modules())
    report = SupportReport()
    for node in gm.graph.nodes:
        r = _classify(node, modules, neuron_cls)
        if r is not None:
            report.ops.append(r)
    return report


def _raise_unsupported(report: SupportReport) -> None:
    if report.ok:
        return
    lines = [f"  {o.op} at {o.name}: {o.fix}" for o in report.unsupported]
    raise ConversionError(
        f"cannot convert: {len(lines)} unsupported op(s); nothing was converted\n"
        + "\n".join(lines)
    )
