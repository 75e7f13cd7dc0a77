"""ANN → SNN conversion: support report, graph capture, neuron swap, BN folding.

``convert(model, neuron="if")`` copies the model, captures its graph with ``torch.fx`` (so
``nn.ReLU``, ``F.relu``, ``torch.relu``, ``clamp(min=0)`` and quantized activations are all
seen), checks every op, and replaces each activation by a spiking neuron whose threshold
is the activation's λ (QCFS, NQ, clip-quant), its clip value (ReLU6, clamp(0, c)), or the
99.9th percentile of its outputs on calibration data (plain ReLU). If anything is not
supported, `ConversionError` lists every offending op before anything is built.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .activations import is_quantized_activation, relu_threshold_hint
from .network import SpikingNetwork
from .neurons import SpikingNeuron, neuron_class
from .pooling import LIPool

__all__ = ["convert", "check", "fold_bn", "ConversionError", "SupportReport", "OpReport"]


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


# ----------------------------------------------------------------------------- BN folding


def fold_bn(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every BatchNorm that directly follows a Conv or
    Linear (whose output nothing else uses) folded into it. Exact in eval mode."""
    gm, reason = _trace(model)
    if gm is None:
        raise ConversionError(f"fold_bn needs a traceable model; {reason}")
    gm = copy.deepcopy(gm).eval()
    _fold_bn_graph(gm)
    return gm


def _fold_bn_graph(gm: fx.GraphModule) -> int:
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(
            modules[node.target], nn.modules.batchnorm._BatchNorm
        ):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, bn = modules[prev.target], modules[node.target]
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
        _set_submodule(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return folded


def _set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


# ----------------------------------------------------------------------------- conversion


def _iter_batches(data: Any, limit: int) -> Iterable[Tensor]:
    """Inputs from a DataLoader of (x, y)/x, a tensor, or an (x, y) pair; at most ``limit`` batches."""
    if isinstance(data, Tensor):
        yield data
        return
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], Tensor):
        yield data[0]
        return
    for i, batch in enumerate(data):
        if i >= limit:
            break
        yield batch[0] if isinstance(batch, tuple | list) else batch


def _percentile(values: Tensor, q: float) -> float:
    """q-th percentile (0..100) of a 1-D tensor without torch.quantile's size limit."""
    # Nearest rank ceil(q/100·n); the relative nudge undoes float noise such as
    # 99.9/100·1000 = 999.0000000000001, which would otherwise pick the rank above.
    rank = q / 100.0 * values.numel()
    k = max(1, min(values.numel(), math.ceil(rank * (1 - 1e-12))))
    return float(values.float().kthvalue(k).values)


@torch.no_grad()
def _calibrate(
    snn: SpikingNetwork,
    todo: list[SpikingNeuron],
    data: Any,
    percentile: float,
    batches: int,
    device,
) -> None:
    """Set each neuron in ``todo`` to the ``percentile`` of its ANN activation's outputs."""
    samples: dict[int, list[Tensor]] = {id(n): [] for n in todo}
    gen = torch.Generator().manual_seed(0)

    def hook(mod, _inp, out):
        flat = out.detach().flatten().float().cpu()
        if flat.numel() > 200_000:  # subsample large maps: the percentile barely moves
            flat = flat[torch.randint(flat.numel(), (200_000,), generator=gen)]
        samples[id(mod)].append(flat)

    handles = [n.register_forward_hook(hook) for n in todo]
    try:
        seen = 0
        for x in _iter_batches(data, batches):
            snn.ann_forward(x.to(device))
            seen += 1
        if seen == 0:
            raise ConversionError("calibration data yielded no batches")
    finally:
        for h in handles:
            h.remove()
    for n in todo:
        p = _percentile(torch.cat(samples[id(n)]), percentile)
        # A dead layer (all outputs 0) still needs a positive threshold; it will never fire.
        n.threshold.fill_(p if p > 0 else 1.0)


def convert(
    model: nn.Module,
    neuron: str = "if",
    *,
    calibration: Any = None,
    percentile: float = 99.9,
    calibration_batches: int = 10,
    fold_batchnorm: bool | None = None,
    v_init: float | None = None,
    **neuron_options: Any,
) -> SpikingNetwork:
    """Convert a trained ANN into a `SpikingNetwork`; ``model`` is never modified.

    Args:
        model: the ANN (QCFS/NQ/clip-quant activations, or plain ReLU with ``calibration``).
        neuron: ``"if"`` (QCFS IF), ``"gn"`` (group neuron, option ``tau``, default the
            activation's L), ``"cif"`` (consistent IF, options ``gamma``, ``negative_spikes``;
            ``nn.MaxPool2d`` becomes `LIPool`).
        calibration: data for plain-ReLU layers (DataLoader, tensor or (x, y)); each such
            layer's threshold is the ``percentile`` of its activations.
        fold_batchnorm: fold BN into the preceding conv/linear (exact in eval). Default:
            on for ``"cif"`` (sleep phases zero biases), off otherwise.
        v_init: initial membrane as a fraction of θ (per neuron quantum for GN). Default:
            the activation's shift (½ for QCFS, 0 for clip-quant), 0 for plain ReLU.
        neuron_options: passed to the neuron's ``from_activation`` / ``from_threshold``.

    Raises:
        ConversionError: listing every unsupported op with its fix, before anything runs.
    """
    neuron_cls = neuron_class(neuron)
    report = check(model, neuron)
    _raise_unsupported(report)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    source = copy.deepcopy(model).eval()
    gm, reason = _trace(source)
    if fold_batchnorm is None:
        fold_batchnorm = neuron == "cif"
    if gm is None:
        warnings.warn(f"{reason}; converting by walking the module tree", stacklevel=2)
        body, layers, todo = _convert_modules(source, neuron_cls, v_init, neuron_options)
        if fold_batchnorm:
            warnings.warn(
                "fold_batchnorm needs a traced graph; BatchNorm kept (exact either way)",
                stacklevel=2,
            )
    else:
        if fold_batchnorm:
            _fold_bn_graph(gm)
        body, layers, todo = _convert_graph(gm, neuron_cls, v_init, neuron_options)
    config = {
        "neuron": neuron,
        "fold_batchnorm": bool(fold_batchnorm),
        "traced": gm is not None,
        "calibrated_layers": len(todo),
        "percentile": percentile if todo else None,
        **{k: v for k, v in neuron_options.items() if isinstance(v, int | float | bool | str)},
    }
    snn = SpikingNetwork(body, neuron, layers, config).to(device).eval()
    if todo:
        if calibration is None:
            names = ", ".join(layers[i] for i, n in enumerate(snn.spiking_layers()) if n[1] in todo)
            raise ConversionError(
                f"plain ReLU layers ({names}) have no learned threshold: pass calibration data, "
                f"e.g. convert(model, calibration=train_loader), or train with act='qcfs'"
            )
        _calibrate(snn, todo, calibration, percentile, calibration_batches, device)
    return snn


def _make_neuron(
    kind: str, info: Any, neuron_cls: type[SpikingNeuron], v_init: float | None, options: dict
) -> tuple[SpikingNeuron, bool]:
    """(neuron, needs_calibration) for one activation classified as ``kind``."""
    opts = dict(options)
    if v_init is not None:
        opts["v_init"] = v_init
    if kind == "quant":
        n = neuron_cls.from_activation(info, **opts)
        n.ann_activation = copy.deepcopy(info)
        return n, False
    opts.setdefault("v_init", 0.0)
    if neuron_cls.__name__ == "GroupNeuron":
        opts.setdefault("tau", 4)
    n = neuron_cls.from_threshold(info if info is not None else 1.0, **opts)
    n.ann_activation = nn.ReLU() if info is None else nn.Hardtanh(0.0, float(info))
    return n, info is None


def _convert_graph(gm: fx.GraphModule, neuron_cls, v_init, options):
    modules = dict(gm.named_modules())
    layers: list[str] = []
    todo: list[SpikingNeuron] = []
    swapped: set[str] = set()
    for node in list(gm.graph.nodes):
        if (
            node.op == "call_module"
            and isinstance(modules[node.target], nn.MaxPool2d)
            and neuron_cls.allows_maxpool
        ):
            _swap_module(gm, node, LIPool.from_maxpool(modules[node.target]), swapped)
            continue
        classified = _activation_kind(node, modules)
        if classified is None:
            continue
        n, needs_calibration = _make_neuron(*classified, neuron_cls, v_init, options)
        if needs_calibration:
            todo.append(n)
        if node.op == "call_module":
            _swap_module(gm, node, n, swapped)
            layers.append(node.target)
        else:
            name = f"neuron_{node.name}"
            gm.add_submodule(name, n)
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            layers.append(name)
    gm.graph.lint()
    gm.recompile()
    return gm, layers, todo


def _swap_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, swapped: set[str]) -> None:
    """Install the stateful ``module`` for the call site ``node``.

    A module called at several sites (one shared ``nn.ReLU``, as in torchvision's
    BasicBlock) must become one stateful module per site, or the sites would share
    one membrane: later sites get a fresh name and the node is pointed at it.
    """
    if node.target in swapped:
        base, i = node.target, 1
        while f"{base}_{i}" in dict(gm.named_modules()):
            i += 1
        gm.add_submodule(f"{base}_{i}", module)
        node.target = f"{base}_{i}"
    else:
        _set_submodule(gm, node.target, module)
    swapped.add(node.target)


def _convert_modules(model: nn.Module, neuron_cls, v_init, options):
    """Fallback for untraceable models: swap activation modules in the module tree."""
    layers: list[str] = []
    todo: list[SpikingNeuron] = []
    graph = fx.Graph()
    for name, m in list(model.named_modules()):
        if not name:
            continue
        if isinstance(m, nn.MaxPool2d) and neuron_cls.allows_maxpool:
            _set_submodule(model, name, LIPool.from_maxpool(m))
            continue
        classified = _activation_kind(graph.call_module(name), {name: m})
        if classified is None:
            continue
        n, needs_calibration = _make_neuron(*classified, neuron_cls, v_init, options)
        if needs_calibration:
            todo.append(n)
        _set_submodule(model, name, n)
        layers.append(name)
    return model, layers, todo
