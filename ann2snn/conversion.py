"""ANN → SNN conversion: graph capture, neuron swap, BN folding, ReLU calibration.

``convert(model, neuron="if")`` copies the model, captures its graph with ``torch.fx`` (so
``nn.ReLU``, ``F.relu``, ``torch.relu``, ``clamp(min=0)`` and quantized activations are all
seen), checks every op (`ann2snn.support`), and replaces each activation by a spiking
neuron whose threshold is the activation's λ (QCFS, NQ, clip-quant), its clip value (ReLU6,
clamp(0, c)), or the 99.9th percentile of its outputs on calibration data (plain ReLU). If
anything is not supported, `ConversionError` lists every offending op before anything is
built.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .network import SpikingNetwork, device_of
from .neuron import SpikingNeuron, neuron_class
from .pooling import LIPool
from .support import (
    ConversionError,
    OpReport,
    SupportReport,
    _activation_kind,
    _raise_unsupported,
    _trace,
    check,
)

__all__ = ["convert", "check", "fold_bn", "ConversionError", "SupportReport", "OpReport"]


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
    device = device_of(model)
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
