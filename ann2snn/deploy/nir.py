"""NIR export and import (the Neuromorphic Intermediate Representation, ``nir`` 1.0).

`export_nir` writes the deploy form of a network (`ann2snn.binarize`: 0/±1 spikes, θ in
the weights) node by node through one mapper table, `import_nir` reads it back into a
`SpikingNetwork` through the inverse table. Shapes in NIR are per sample (no batch).

What NIR's ``IF`` node cannot say is carried in each node's metadata under ``"ann2snn"``
(the round trip inside ann2snn is lossless): reset by subtraction (NIR's IF resets to
v_reset), the initial membrane v(0) per neuron (θ/2 for QCFS/NQ, staggered members for
group neurons, calibrated offsets), the consistent IF's rules (negative spikes, γ, the
count cap) and, in the graph's metadata, the wake/sleep schedule. Residual additions are
written as a unit ``Scale`` with two incoming edges (NIR sums a node's inputs); group
neurons' member fan-out and sum as 1×1 convolutions / affine maps.

Other readers execute NIR's IF: they reset to zero and start from v = 0. `export_nir`
returns the list of what such a reader loses, per layer, so nothing is lost silently.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..nn.network import SpikingNetwork
from ..nn.neurons import ConsistentIF, IFNeuron, SpikingNeuron
from .binary import MemberExpand, MemberSum, SpikeScale, binarize, is_binarized

__all__ = ["export_nir", "import_nir", "NIRExportError"]

FORMAT = "ann2snn-nir/1"


class NIRExportError(ValueError):
    """The network holds an op NIR cannot express; the message names it."""


def _nir():
    try:
        import nir
    except ImportError as e:  # an optional dependency: say how to get it
        raise ImportError(
            "NIR export/import needs the 'nir' package: pip install 'ann2snn[export]'"
        ) from e
    return nir


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().astype(np.float32)


def _shape(node: fx.Node) -> tuple[int, ...]:
    """Per-sample shape of a node's output (batch dim dropped)."""
    return tuple(node.meta["tensor_meta"].shape[1:])


def _pool_geometry(
    module_or_args: Any, in_shape: tuple[int, ...], out_shape: tuple[int, ...], where: str = ""
):
    """(kernel, stride, padding) of an average pool, adaptive ones included when exact.

    NIR's ``AvgPool2d`` divides every window by the kernel's area over a symmetric padding:
    a ceil-mode pool whose last windows hang over the edge, a pool that leaves the padding
    out of its divisor, and a divisor override have no exact NIR form and are refused."""
    if isinstance(module_or_args, nn.AvgPool2d):
        m = module_or_args
        k, s, p = m.kernel_size, m.stride or m.kernel_size, m.padding
        _check_exact_pool(m, in_shape, out_shape, where)
    else:  # adaptive: exact as a plain pool when the output divides the input
        (h, w), (oh, ow) = in_shape[-2:], out_shape[-2:]
        if h % oh or w % ow:
            raise NIRExportError(
                f"adaptive average pool {in_shape} → {out_shape} is not a fixed pool"
            )
        k = s = (h // oh, w // ow)
        p = 0
    pair = lambda v: np.array(v if isinstance(v, tuple | list) else (v, v))  # noqa: E731
    return pair(k), pair(s), pair(p)


def _check_exact_pool(m: nn.AvgPool2d, in_shape: tuple, out_shape: tuple, where: str) -> None:
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    (kh, kw), (sh, sw) = pair(m.kernel_size), pair(m.stride or m.kernel_size)
    (ph, pw), (h, w) = pair(m.padding), in_shape[-2:]
    floor_out = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    why = None
    if m.ceil_mode and tuple(out_shape[-2:]) != floor_out:
        why = (
            f"ceil_mode=True makes its last windows overhang a {h}×{w} input (output "
            f"{tuple(out_shape[-2:])}, not {floor_out}); use ceil_mode=False or an input "
            "size the windows divide"
        )
    elif not m.count_include_pad and (ph or pw):
        why = "count_include_pad=False divides border windows by fewer than k²; use the default"
    elif m.divisor_override:
        why = f"divisor_override={m.divisor_override} is not the kernel area"
    if why:
        raise NIRExportError(f"average pool {where or 'layer'}: NIR has no exact form: {why}")


def _neuron_node(nir, n: SpikingNeuron, shape: tuple[int, ...]):
    """A binary neuron → NIR ``IF`` (θ, v_reset = 0) + what NIR cannot say, in metadata."""
    ones = np.ones(shape, np.float32)
    theta = float(n.threshold)
    v0 = torch.zeros(shape) + n.initial_membrane().detach().cpu().float()  # [C, ...] per neuron
    meta: dict[str, Any] = {
        "format": FORMAT,
        "neuron": "cif" if isinstance(n, ConsistentIF) else "if",
        "reset": "subtract",
        "v_init": _np(v0),
        "spike": "binary",
    }
    if isinstance(n, ConsistentIF):
        meta.update(gamma=n.gamma, negative_spikes=int(n.negative_spikes))
    return nir.IF(
        r=ones, v_threshold=ones * theta, v_reset=np.zeros_like(ones), metadata={"ann2snn": meta}
    )


def _member_map(nir, module: nn.Module, in_shape, out_shape):
    """Member fan-out/sum as a fixed 1×1 conv ([B, C, H, W]) or affine map ([B, C])."""
    members = module.members
    cin, cout = in_shape[0], out_shape[0]
    eye = torch.eye(min(cin, cout))
    w = eye.repeat(members, 1) if isinstance(module, MemberExpand) else eye.repeat(1, members)
    meta = {"ann2snn": {"format": FORMAT, "op": type(module).__name__, "members": members}}
    if len(in_shape) == 3:
        return nir.Conv2d(
            input_shape=tuple(in_shape[1:]),
            weight=_np(w[:, :, None, None]),
            stride=1,
            padding=0,
            dilation=1,
            groups=1,
            bias=np.zeros(cout, np.float32),
            metadata=meta,
        )
    return nir.Affine(weight=_np(w), bias=np.zeros(cout, np.float32), metadata=meta)


def _map_node(nir, gm: fx.GraphModule, node: fx.Node):
    """One fx node → one NIR node, or None for an op that passes its input through."""
    in_shape = _shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    out_shape = _shape(node)
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, SpikingNeuron):
            return _neuron_node(nir, m, out_shape)
        if isinstance(m, nn.Conv2d):
            return nir.Conv2d(
                input_shape=tuple(in_shape[1:]),
                weight=_np(m.weight),
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=m.groups,
                bias=_np(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32),
            )
        if isinstance(m, nn.Linear):
            bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32)
            return nir.Affine(weight=_np(m.weight), bias=bias)
        if isinstance(m, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            k, s, p = _pool_geometry(m, in_shape, out_shape, repr(node.target))
            return nir.AvgPool2d(kernel_size=k, stride=s, padding=p)
        if isinstance(m, nn.Flatten):
            return nir.Flatten({"input": np.array(in_shape)}, start_dim=m.start_dim - 1, end_dim=-1)
        if isinstance(m, SpikeScale):
            return nir.Scale(np.full(out_shape, float(m.scale), np.float32))
        if isinstance(m, MemberExpand | MemberSum):
            return _member_map(nir, m, in_shape, out_shape)
        if isinstance(m, nn.BatchNorm2d):  # not after a conv: a depthwise 1×1 conv
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            return nir.Conv2d(
                input_shape=tuple(in_shape[1:]),
                weight=_np(scale[:, None, None, None]),
                stride=1,
                padding=0,
                dilation=1,
                groups=m.num_features,
                bias=_np(m.bias - m.running_mean * scale),
            )
        if isinstance(m, nn.Identity | nn.Dropout):
            return None
        raise NIRExportError(f"NIR has no node for layer {node.target!r} ({type(m).__name__})")
    target = node.target
    if target in (operator.add, torch.add):
        return nir.Scale(
            np.ones(out_shape, np.float32), metadata={"ann2snn": {"format": FORMAT, "op": "add"}}
        )
    if target in (torch.flatten, "flatten", "view", "reshape"):
        if len(out_shape) == 1 and len(in_shape) > 1:
            return nir.Flatten({"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
        if out_shape == in_shape:
            return None
    if target in (F.avg_pool2d, F.adaptive_avg_pool2d):
        k, s, p = (
            _pool_geometry(None, in_shape, out_shape)
            if target is F.adaptive_avg_pool2d
            else _pool_geometry(
                nn.AvgPool2d(*node.args[1:], **node.kwargs), in_shape, out_shape, repr(node.name)
            )
        )
        return nir.AvgPool2d(kernel_size=k, stride=s, padding=p)
    if target in ("contiguous",):
        return None
    raise NIRExportError(
        f"NIR has no node for {node.op} {getattr(target, '__name__', target)!r} at {node.name!r}"
    )


def _reader_losses(net: SpikingNetwork, sleep: int) -> list[str]:
    """What a reader that executes plain NIR IF nodes (no ann2snn metadata) loses."""
    lost = []
    for name, n in net.spiking_layers():
        v0 = n.initial_membrane()
        what = ["reset by subtraction (NIR IF resets to v_reset = 0)"]
        if bool((torch.as_tensor(v0) != 0).any()):
            what.append("the initial membrane v(0) (NIR IF starts at 0)")
        if isinstance(n, ConsistentIF):
            what.append("negative spikes and the count cap of the consistent IF")
        lost.append(f"{name}: " + "; ".join(what))
    if sleep:
        lost.append(
            "the wake/sleep schedule (sleep steps are input-free steps the reader must run)"
        )
    return lost


def export_nir(snn: SpikingNetwork, path: str | Path, example: Tensor, sleep: int = 0) -> list[str]:
    """Write ``snn`` as a NIR graph (binary spikes, θ in the weights) to ``path``.

    Args:
        snn: a converted (optionally calibrated or binarized) network.
        path: the ``.nir`` file (HDF5) to write.
        example: one input batch ``[B, ...]`` (shapes of every node).
        sleep: CASC's sleep steps after the wake steps, recorded in the graph metadata.

    Returns:
        What readers other than ann2snn lose, one line per layer (also in the file's
        metadata under ``ann2snn.reader_losses``).
    """
    nir = _nir()
    net = snn if is_binarized(snn) else binarize(snn, example)
    gm = net.body
    net.reset()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    net.reset()
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    source: dict[fx.Node, list[str]] = {}  # fx node → the NIR node(s) carrying its value
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            nodes["input"] = nir.Input({"input": np.array(_shape(node))})
            source[node] = ["input"]
        elif node.op == "output":
            out = node.args[0]
            nodes["output"] = nir.Output({"output": np.array(_shape(out))})
            edges += [(s, "output") for s in source[out]]
        elif node.op in ("call_module", "call_function", "call_method"):
            mapped = _map_node(nir, gm, node)
            inputs = [a for a in node.args if isinstance(a, fx.Node)]
            if mapped is None:
                source[node] = source[inputs[0]]
                continue
            nodes[node.name] = mapped
            edges += [(s, node.name) for a in inputs for s in source[a]]
            source[node] = [node.name]
        else:
            raise NIRExportError(f"NIR export: unsupported graph node {node.op} {node.target!r}")
    losses = _reader_losses(net, sleep)
    meta = {
        "ann2snn": {
            "format": FORMAT,
            "neuron": snn.neuron,
            "layers": list(net.layers),
            "schedule": {"sleep": int(sleep)},
            "reader_losses": losses,
        }
    }
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta))
    return losses


# ----------------------------------------------------------------------------- import


class PlainNIRIF(SpikingNeuron):
    """NIR's IF as a reader without ann2snn's metadata executes it (discrete time, R = 1):
    ``v ← v + x``; spike 1 where ``v > v_threshold`` (strict); there ``v ← v_reset``;
    v(0) = 0. For measuring what such readers lose (`import_nir(..., metadata=False)`)."""

    @staticmethod
    def kernel(v: Tensor, x: Tensor, out: Tensor, theta: Tensor, v_reset: float) -> Tensor:
        v.add_(x)
        torch.gt(v, theta, out=out)
        v.mul_(1 - out).add_(out * v_reset)
        return out.mul_(theta)  # emitted value θ per spike; `binary` turns it into 1

    def kernel_args(self) -> tuple:
        return (self.threshold, 0.0)


def _module_for(nir, node, metadata: bool = True) -> nn.Module:
    """The inverse table: one NIR node → one torch module (``metadata=False``: as a reader
    without ann2snn's metadata: plain NIR IF neurons, additions still summed)."""
    meta = (node.metadata or {}).get("ann2snn", {})
    if not metadata and isinstance(node, nir.IF):
        plain = PlainNIRIF(float(np.asarray(node.v_threshold).reshape(-1)[0]), v_init=0.0)
        plain.binary = True
        return plain
    if not metadata:  # member fan-out/sum then run as the 1×1 convs they are written as
        meta = {}
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    if isinstance(node, nir.IF):
        theta = float(np.asarray(node.v_threshold).reshape(-1)[0])
        if meta.get("neuron") == "cif":
            n: SpikingNeuron = ConsistentIF(
                theta,
                v_init=0.0,
                gamma=int(meta.get("gamma", 1)),
                negative_spikes=bool(meta.get("negative_spikes", 1)),
            )
        else:
            n = IFNeuron(theta, v_init=0.0)
        v_init = t(meta["v_init"]) if "v_init" in meta else torch.zeros(())
        n.v_offset = v_init  # per neuron [C, ...]: broadcasts over the batch
        n.binary = True
        return n
    if meta.get("op") in ("MemberExpand", "MemberSum"):
        return (MemberExpand if meta["op"] == "MemberExpand" else MemberSum)(int(meta["members"]))
    if meta.get("op") == "add":  # a residual sum: the edges already add
        return nn.Identity()
    if isinstance(node, nir.Conv2d):
        w = t(node.weight)
        conv = nn.Conv2d(
            w.shape[1] * node.groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride=tuple(np.atleast_1d(node.stride)),
            padding=tuple(np.atleast_1d(node.padding)),
            dilation=tuple(np.atleast_1d(node.dilation)),
            groups=node.groups,
        )
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(t(node.bias))
        return conv
    if isinstance(node, nir.Affine | nir.Linear):
        w = t(node.weight)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        with torch.no_grad():
            lin.weight.copy_(w)
            if isinstance(node, nir.Affine):
                lin.bias.copy_(t(node.bias))
        return lin
    if isinstance(node, nir.AvgPool2d):
        as_tuple = lambda a: tuple(int(v) for v in np.atleast_1d(a))  # noqa: E731
        return nn.AvgPool2d(
            as_tuple(node.kernel_size), as_tuple(node.stride), as_tuple(node.padding)
        )
    if isinstance(node, nir.Flatten):
        return nn.Flatten(int(node.start_dim) + 1, -1)
    if isinstance(node, nir.Scale):
        scale = np.asarray(node.scale).reshape(-1)
        if not np.all(scale == scale[0]):
            raise ValueError("import_nir: a Scale node with per-element scales is not supported")
        return SpikeScale(float(scale[0]))
    raise ValueError(f"import_nir: no ann2snn module for NIR node {type(node).__name__}")


def import_nir(path: str | Path, metadata: bool = True) -> SpikingNetwork:
    """Read a NIR graph (written by `export_nir`, or any graph of the supported nodes:
    Input, Output, Affine, Linear, Conv2d, AvgPool2d, Flatten, Scale, IF) into a
    binarized `SpikingNetwork`. Nodes with several incoming edges sum their inputs.

    ``metadata=False`` ignores ann2snn's node metadata and runs NIR's IF as written
    (reset to v_reset, v(0) = 0, positive spikes only): what a plain NIR reader does,
    to measure what it loses."""
    nir = _nir()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"import_nir: no NIR file at {path}")
    graph = nir.read(str(path))
    incoming: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for src, dst in graph.edges:
        incoming[dst].append(src)
    root = nn.Module()
    g = fx.Graph()
    value: dict[str, fx.Node] = {}
    names: dict[str, str] = {}
    order = _topological(graph.nodes, incoming)
    layers: list[str] = []
    for key in order:
        node = graph.nodes[key]
        if isinstance(node, nir.Input):
            value[key] = g.placeholder("x")
            continue
        ins = [value[s] for s in incoming[key]]
        total = ins[0]
        for other in ins[1:]:
            total = g.call_function(operator.add, (total, other))
        if isinstance(node, nir.Output):
            g.output(total)
            continue
        name = "n_" + "".join(c if c.isalnum() else "_" for c in key)
        names[key] = name
        module = _module_for(nir, node, metadata)
        root.add_module(name, module)
        value[key] = g.call_module(name, (total,))
        if isinstance(module, SpikingNeuron):
            layers.append(name)
    meta = (graph.metadata or {}).get("ann2snn", {})
    gm = fx.GraphModule(root, g)
    config = {
        "binary": True,
        "source": "nir",
        "folded_scales": None,
        "sleep": int(meta.get("schedule", {}).get("sleep", 0)),
    }
    return SpikingNetwork(gm, str(meta.get("neuron", "if")), layers, config)


def _topological(nodes: dict[str, Any], incoming: dict[str, list[str]]) -> list[str]:
    done: list[str] = []
    seen: set[str] = set()

    def visit(k: str, stack: tuple[str, ...] = ()) -> None:
        if k in seen:
            return
        if k in stack:
            raise ValueError(
                f"import_nir: the graph has a cycle through {k!r} (recurrent NIR graphs are not "
                "supported)"
            )
        for s in incoming[k]:
            visit(s, stack + (k,))
        seen.add(k)
        done.append(k)

    for k in nodes:
        visit(k)
    return done
