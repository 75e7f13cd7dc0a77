"""Reader profiles for NIR files: how each simulator family reads NIR, and the rewrites of a
graph that make a file it loads and runs as written.

NIR leaves conventions open that readers settle differently (checked against their code:
SpikingJelly 2.0.0, sinabs 3.1.3, Norse 1.1.0, snnTorch 1.0.0):

* pooling: Norse and sinabs map ``SumPool2d`` only; SpikingJelly and snnTorch ``AvgPool2d``;
* ``Flatten.start_dim``: SpikingJelly and sinabs count it per sample (NIR's shapes have no
  batch) and add 1; Norse and snnTorch hand it to ``torch.nn.Flatten`` as is, which then
  flattens the batch too;
* the time step: SpikingJelly and snnTorch integrate with dt = 10⁻⁴ and check ``r = 1/dt``
  (SpikingJelly) or ``r = 1`` (snnTorch's IF, which it runs as a leaky neuron of β = 0.9);
* the schema: sinabs pins nir ≤ 1.0.4, whose ``IF`` has no ``v_reset``;
* the neuron: what each reader runs for NIR's ``IF`` (`ReaderNeuron`).

One `NIRProfile` per reader family says how `export_nir` writes for it; every profile's
file still imports back into ann2snn losslessly (`import_nir` reads the rewrites back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..nn.neurons import ConsistentIF

__all__ = ["NIRProfile", "ReaderNeuron", "NIR_PROFILES", "NIRExportError", "reader_losses"]


class NIRExportError(ValueError):
    """The network holds an op NIR (or the chosen reader's profile) cannot express; the
    message names it."""


@dataclass(frozen=True)
class ReaderNeuron:
    """What a reader runs for NIR's ``IF`` node (none of them has an initial membrane)."""

    reset: str  # "zero": v ← 0 after a spike; "subtract": v ← v − θ·spikes
    inclusive: bool  # fires on v ≥ θ (else v > θ)
    multi_spike: bool  # emits ⌊v/θ⌋ spikes in one step (sinabs' MultiSpike), not at most 1
    floor: bool  # holds the membrane at v ≥ −θ (sinabs' min_v_mem)


#: NIR's IF as NIR specifies it: reset to v_reset (0 here), fire on v > θ, one spike a step.
NIR_SPEC = ReaderNeuron("zero", inclusive=False, multi_spike=False, floor=False)


@dataclass(frozen=True)
class NIRProfile:
    """How `export_nir` writes a file for one reader family."""

    loads: str  # how that reader loads the file
    pooling: str  # "avg": AvgPool2d; "sum": SumPool2d, 1/k² folded into the next weights
    flatten: str  # "sample": start_dim per sample; "torch": no Flatten before dense layers
    node: str  # the neuron node written: "IF", or "LIF" (leak-free: τ/dt = 10⁸)
    dt: float  # the reader's step: IF nodes carry r = 1/dt, so that v ← v + x per step
    schema: str  # "1.0": as the installed nir writes; "1.0.4": what nir ≤ 1.0.4 reads
    scale: bool  # the reader maps NIR's Scale (else: a diagonal map, additions as edges)
    order: str  # "topological"; "depth-first": nirtorch's GraphExecutor's pre-order walk
    runs: ReaderNeuron | None  # what the reader runs for IF; None: ann2snn's own neuron


#: The reader families `export_nir(..., profile=NAME)` writes for (the lossless ``ann2snn``
#: file is the default; docs/deploy.md has each reader's accuracy).
NIR_PROFILES: dict[str, NIRProfile] = {
    "ann2snn": NIRProfile("ann2snn.import_nir(path)",
                          "avg", "sample", "IF", 1.0, "1.0", True, "topological", None),
    "nir": NIRProfile("any NIR 1.0 reader (dt = 1)",
                      "avg", "sample", "IF", 1.0, "1.0", True, "topological", NIR_SPEC),
    "sum-pool": NIRProfile("a NIR reader that maps SumPool2d, not AvgPool2d",
                           "sum", "sample", "IF", 1.0, "1.0", True, "topological", NIR_SPEC),
    "spikingjelly": NIRProfile("spikingjelly.activation_based.nir_exchange.import_from_nir(path)",
                               "avg", "sample", "IF", 1e-4, "1.0", False, "topological",
                               ReaderNeuron("zero", True, False, False)),
    "sinabs": NIRProfile("sinabs.from_nir(nir.read(path), batch_size=B)",
                         "sum", "sample", "IF", 1.0, "1.0.4", False, "depth-first",
                         ReaderNeuron("subtract", True, True, True)),
    "norse": NIRProfile("norse.torch.from_nir(nir.read(path))",
                        "sum", "torch", "IF", 1.0, "1.0", False, "depth-first", NIR_SPEC),
    "snntorch": NIRProfile("snntorch.import_nir.import_from_nir(nir.read(path))",
                           "avg", "torch", "LIF", 1e-4, "1.0", False, "topological", NIR_SPEC),
}  # fmt: skip

#: A leak-free LIF: τ in seconds with τ/dt = 10⁸, so β = 1 − dt/τ is 1 in float32.
LIF_TAU_STEPS = 1e8


def reader_losses(net: Any, profile: str, sleep: int = 0) -> list[str]:
    """What the profile's reader runs differently from ann2snn, one line per spiking layer
    (for the ``ann2snn`` profile: what a reader that ignores the metadata loses)."""
    runs = NIR_PROFILES[profile].runs or NIR_SPEC
    lost = []
    for name, n in net.spiking_layers():
        what = []
        if runs.reset == "zero":
            what.append("reset by subtraction (the reader resets to 0)")
        if bool((torch.as_tensor(n.initial_membrane()) != 0).any()):
            what.append("the initial membrane v(0) (the reader starts at 0)")
        if runs.multi_spike:
            what.append("one spike per step (the reader emits ⌊v/θ⌋ spikes: no clip at θ)")
        if runs.floor:
            what.append("the unbounded membrane (the reader holds v ≥ −θ)")
        if not runs.inclusive:
            what.append("firing at v = θ (the reader fires on v > θ)")
        if isinstance(n, ConsistentIF):
            what.append("negative spikes and the count cap of the consistent IF")
        lost.append(f"{name}: " + "; ".join(what))
    if sleep:
        lost.append(
            "the wake/sleep schedule (sleep steps are input-free steps the reader must run)"
        )
    return lost


def rewrite(
    nir: Any, profile: str, nodes: dict[str, Any], edges: list[tuple[str, str]]
) -> list[str]:
    """Rewrite the mapped graph (``nodes``/``edges``, in place) for the profile's reader;
    returns what that reader will still run wrongly in this graph (its execution order)."""
    p = NIR_PROFILES[profile]
    if p.pooling == "sum":
        _sum_pooled(nir, nodes, edges, profile)
    if not p.scale:
        _scales_as_maps(nir, nodes, edges)
    if p.flatten == "torch":
        _dense_as_convolutions(nir, nodes, edges)
    for name, node in list(nodes.items()):
        if isinstance(node, nir.IF):
            nodes[name] = _neuron(nir, node, p)
    return _depth_first_order(nir, nodes, edges) if p.order == "depth-first" else []


def _readers(edges: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Node → the nodes its edges feed, in edge order."""
    readers: dict[str, list[str]] = {}
    for s, d in edges:
        readers.setdefault(s, []).append(d)
    return readers


def _bypass(nodes: dict[str, Any], edges: list[tuple[str, str]], key: str) -> list[str]:
    """Remove node ``key``, feeding its inputs straight to its readers (in place); returns
    the readers."""
    srcs = [s for s, d in edges if d == key]
    dsts = [d for s, d in edges if s == key]
    edges[:] = [e for e in edges if key not in e] + [(s, d) for s in srcs for d in dsts]
    del nodes[key]
    return dsts


def _sum_pooled(
    nir: Any, nodes: dict[str, Any], edges: list[tuple[str, str]], profile: str
) -> None:
    """Average pools → ``SumPool2d``, each 1/k² folded into the weights of the layers that
    read the pool (through ``Flatten``); refused by name where a reader of the pool has no
    weights to take it, or where the pool pads (sinabs and Norse drop a sum pool's
    padding)."""
    readers = _readers(edges)
    for name, node in list(nodes.items()):
        if not isinstance(node, nir.AvgPool2d):
            continue
        if np.any(np.atleast_1d(node.padding)):
            raise NIRExportError(
                f"NIR export (profile {profile!r}): average pool {name!r} pads its input; "
                "this reader's sum pool has no padding (export with profile='nir')"
            )
        area = float(np.prod(np.atleast_1d(node.kernel_size)))
        if np.atleast_1d(node.kernel_size).size == 1:
            area *= area
        todo, weighted = list(readers.get(name, [])), []
        while todo:
            dst = todo.pop()
            if isinstance(nodes[dst], nir.Flatten):
                todo += readers.get(dst, [])
            elif isinstance(nodes[dst], nir.Conv2d | nir.Affine | nir.Linear) and all(
                s == name or isinstance(nodes[s], nir.Flatten) for s, d in edges if d == dst
            ):
                weighted.append(dst)
            else:
                raise NIRExportError(
                    f"NIR export (profile {profile!r}): average pool {name!r} feeds "
                    f"{type(nodes[dst]).__name__} {dst!r}, which has no weights to take its "
                    "1/k²; export with profile='nir'"
                )
        for dst in set(weighted):
            nodes[dst].weight = nodes[dst].weight / area
        nodes[name] = nir.SumPool2d(
            kernel_size=node.kernel_size, stride=node.stride, padding=node.padding
        )


def _depth_first_order(nir: Any, nodes: dict[str, Any], edges: list[tuple[str, str]]) -> list:
    """Readers built on nirtorch's ``GraphExecutor`` (sinabs, Norse) run the nodes in the
    pre-order of a depth-first walk from the input, following each node's edges in file
    order, and return the last node's value: a node reached before all its inputs reads
    the missing ones from the step before. Edges into nodes with several inputs go last
    (which orders identity-shortcut residual blocks right); what is still out of order is
    returned, one line per node."""
    fan_in: dict[str, int] = {}
    for _, d in edges:
        fan_in[d] = fan_in.get(d, 0) + 1
    edges.sort(key=lambda e: fan_in[e[1]] > 1)  # stable: the file order otherwise
    readers = _readers(edges)
    start = next(k for k, n in nodes.items() if isinstance(n, nir.Input))
    order: list[str] = []
    seen: set[str] = set()
    todo = [start]
    while todo:  # an iterative pre-order walk, children in edge order
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            order.append(k)
            todo += reversed([d for d in readers.get(k, []) if d not in seen])
    at = {k: i for i, k in enumerate(order)}
    late = [
        f"{d}: the reader runs it before its input {s} (nirtorch's depth-first order), "
        f"which it reads from the step before"
        for s, d in edges
        if at[s] > at[d]
    ]
    if not isinstance(nodes[order[-1]], nir.Output):
        late.append(f"the reader returns node {order[-1]!r}'s value, not the output's")
    return late


def _neuron(nir: Any, node: Any, p: NIRProfile) -> Any:
    """An IF node as the profile writes it: r = 1/dt, or a leak-free LIF."""
    ones = np.ones_like(node.r)
    if p.node == "LIF":
        tau = ones * np.float32(LIF_TAU_STEPS * p.dt)
        return nir.LIF(
            tau=tau,
            r=ones * np.float32(LIF_TAU_STEPS),  # r·dt/τ = 1: v ← v + x per step
            v_leak=np.zeros_like(ones),
            v_threshold=node.v_threshold,
            v_reset=node.v_reset,
            metadata=node.metadata,
        )
    return nir.IF(
        r=ones * np.float32(1.0 / p.dt),
        v_threshold=node.v_threshold,
        v_reset=node.v_reset,
        metadata=node.metadata,
    )


#: The node types whose nir ≤ 1.0.4 constructors take no ``metadata`` (its reader passes a
#: node's metadata to them all the same, and fails).
_NO_METADATA_104 = (b"Input", b"Output", b"Linear", b"Conv2d", b"AvgPool2d", b"Scale", b"Delay")


def to_schema_104(path: Path) -> None:
    """Make a written file one nir ≤ 1.0.4 reads: no ``v_reset`` on neurons (that schema
    has none) and no metadata on the node types whose constructors there take none."""
    import h5py  # nir's own dependency

    with h5py.File(path, "r+") as f:
        nodes = f["node"]["nodes"] if "nodes" in f["node"] else f["node"]
        for key in list(nodes):
            node = nodes[key]
            if "v_reset" in node:
                del node["v_reset"]
            if "metadata" in node and node["type"][()] in _NO_METADATA_104:
                del node["metadata"]


def _scales_as_maps(nir: Any, nodes: dict[str, Any], edges: list[tuple[str, str]]) -> None:
    """For readers without a ``Scale`` node: a residual addition (a unit Scale with several
    inputs) becomes its edges (every reader sums a node's inputs); any other Scale becomes a
    diagonal 1×1 Conv2d (``[C, H, W]``) or Affine (``[n]``)."""
    for key, node in list(nodes.items()):
        if not isinstance(node, nir.Scale):
            continue
        meta = (node.metadata or {}).get("ann2snn", {})
        if meta.get("op") == "add" and np.all(node.scale == 1):
            dsts = [d for s, d in edges if s == key]
            if not any(isinstance(nodes[d], nir.Output) for d in dsts):
                _bypass(nodes, edges, key)
                continue
        scale = np.asarray(node.scale, np.float32)
        if (
            scale.ndim not in (1, 3)
            or np.unique(scale.reshape(scale.shape[0], -1), axis=1).shape[1] != 1
        ):
            raise NIRExportError(
                f"NIR export: Scale {key!r} of shape {scale.shape} has no diagonal map for "
                "readers without a Scale node (export with profile='nir')"
            )
        n = scale.shape[0]
        diag = np.diag(scale.reshape(n, -1)[:, 0]).astype(np.float32)
        if scale.ndim == 3:  # a 1×1 conv over the [H, W] map
            nodes[key] = _conv(nir, diag[:, :, None, None], node, tuple(scale.shape[1:]))
        else:
            nodes[key] = nir.Affine(
                weight=diag, bias=np.zeros(n, np.float32), metadata=node.metadata
            )


def _dense_as_convolutions(nir: Any, nodes: dict[str, Any], edges: list[tuple[str, str]]) -> None:
    """For readers that hand ``Flatten.start_dim`` to torch (which then counts the batch): no
    Flatten before the dense layers. A dense layer reading a Flatten of ``[C, H, W]`` becomes
    a ``Conv2d`` with an H×W kernel (its ``[out, C·H·W]`` weights are ``[out, C, H, W]`` in
    torch's flatten order), every node after it works on ``[n, 1, 1]``, and one
    ``Flatten(start_dim=1)`` before the Output gives ``[B, n]`` in the reader (NIR: [n, 1]).
    A Flatten of a flat input is dropped (it changes nothing)."""
    starts: list[str] = []
    for f in [k for k, n in nodes.items() if isinstance(n, nir.Flatten)]:
        shape = tuple(int(s) for s in nodes[f].input_type["input"])
        dsts = _bypass(nodes, edges, f)
        if len(shape) == 1:
            continue
        if len(shape) != 3:
            raise NIRExportError(
                f"NIR export: Flatten {f!r} of a {shape} input; readers that pass "
                "Flatten.start_dim to torch take flattened [C, H, W] maps only"
            )
        for d in dsts:
            nodes[d] = _full_conv(nir, nodes[d], shape, d)
        starts += dsts
    readers = _readers(edges)
    after, todo = set(), list(starts)
    while todo:  # every node fed, directly or not, by a new full conv
        k = todo.pop()
        if k not in after:
            after.add(k)
            todo += readers.get(k, [])
    out_key = next(k for k, n in nodes.items() if isinstance(n, nir.Output))
    for k in after - {out_key}:
        nodes[k] = _on_unit_map(nir, nodes[k], k)
    if out_key in after:
        n_out = int(np.prod(nodes[out_key].output_type["output"]))
        edges[:] = [(s, "flatten_output" if d == out_key else d) for s, d in edges]
        edges.append(("flatten_output", out_key))
        nodes["flatten_output"] = nir.Flatten({"input": np.array([n_out, 1, 1])}, 1, -1)
        nodes[out_key] = nir.Output({"output": np.array([n_out, 1])})


def _full_conv(nir: Any, node: Any, shape: tuple[int, ...], key: str) -> Any:
    """A dense layer on a flattened ``[C, H, W]`` as a Conv2d with an H×W kernel."""
    if not isinstance(node, nir.Affine | nir.Linear):
        raise NIRExportError(
            f"NIR export: {type(node).__name__} {key!r} reads a Flatten; readers that pass "
            "Flatten.start_dim to torch need a dense layer there (export with profile='nir')"
        )
    return _conv(nir, node.weight.reshape(node.weight.shape[0], *shape), node)


def _conv(
    nir: Any, weight: np.ndarray, linear: Any, input_shape: tuple[int, ...] | None = None
) -> Any:
    """A linear node's map (dense or scale) as an unpadded, unstrided Conv2d with ``weight``
    [out, C, h, w], that node's bias (zeros without one) and metadata; ``input_shape`` is
    the input map's [H, W] (default: the kernel's, a kernel over the whole map)."""
    bias = getattr(linear, "bias", None)
    return nir.Conv2d(
        input_shape=input_shape or tuple(weight.shape[2:]),
        weight=weight,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=bias if bias is not None else np.zeros(weight.shape[0], np.float32),
        metadata=linear.metadata,
    )


def _on_unit_map(nir: Any, node: Any, key: str) -> Any:
    """A node after the first dense layer, on ``[n, 1, 1]`` instead of ``[n]``."""
    unit = lambda a: None if a is None else np.asarray(a).reshape(-1, 1, 1)  # noqa: E731
    if isinstance(node, nir.Affine | nir.Linear):
        return _conv(nir, node.weight.reshape(*node.weight.shape, 1, 1), node)
    meta = _unit_metadata(node.metadata)
    if isinstance(node, nir.IF):
        return nir.IF(
            r=unit(node.r),
            v_threshold=unit(node.v_threshold),
            v_reset=unit(node.v_reset),
            metadata=meta,
        )
    if isinstance(node, nir.Scale):
        return nir.Scale(unit(node.scale), metadata=meta)
    if isinstance(node, nir.Conv2d):  # already on [n, 1, 1] (a full conv made above)
        return node
    raise NIRExportError(
        f"NIR export: {type(node).__name__} {key!r} after a Flatten has no form on [n, 1, 1] "
        "(export with profile='nir')"
    )


def _unit_metadata(meta: dict | None) -> dict:
    """ann2snn's per-neuron v(0) on the node's new ``[n, 1, 1]`` shape."""
    meta = dict(meta or {})
    ours = dict(meta.get("ann2snn", {}))
    if "v_init" in ours:
        ours["v_init"] = np.asarray(ours["v_init"]).reshape(-1, 1, 1)
    if ours:
        meta["ann2snn"] = ours
    return meta
