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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .._io import check_free_space, staged_output
from .._util import one_of
from ..nn.network import SpikingNetwork
from ..nn.neurons import ConsistentIF, IFNeuron, SpikingNeuron
from .binary import (
    MemberExpand,
    MemberSum,
    SpikeScale,
    binarize,
    is_binarized,
    refuse_presimulation,
)
from .nir_profiles import (
    NIR_PROFILES,
    NIR_SPEC,
    NIRExportError,
    ReaderNeuron,
    reader_losses,
    rewrite,
    to_schema_104,
)

__all__ = ["export_nir", "import_nir", "NIRExportError", "NIR_PROFILES"]

FORMAT = "ann2snn-nir/1"


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


def export_nir(
    snn: SpikingNetwork,
    path: str | Path,
    example: Tensor,
    sleep: int = 0,
    profile: str = "ann2snn",
) -> list[str]:
    """Write ``snn`` as a NIR graph (binary spikes, θ in the weights) to ``path``.

    Args:
        snn: a converted (optionally calibrated or binarized) network.
        path: the ``.nir`` file (HDF5) to write.
        example: one input batch ``[B, ...]`` (shapes of every node).
        sleep: CASC's sleep steps after the wake steps, recorded in the graph metadata.
        profile: the reader the file is written for, a key of `NIR_PROFILES`
            (``ann2snn``: lossless in ann2snn; ``nir``: NIR as specified; ``spikingjelly``,
            ``sinabs``, ``norse``, ``snntorch``: a file that reader loads and runs as
            written). Every profile's file imports back to the same network (`import_nir`).

    Returns:
        What that reader runs differently from ann2snn, one line per layer (for
        ``ann2snn``: what a reader that ignores the metadata loses); also in the file's
        metadata under ``ann2snn.reader_losses``.
    """
    nir = _nir()
    one_of("export_nir: profile", profile, NIR_PROFILES)
    spec = NIR_PROFILES[profile]
    refuse_presimulation(snn, "NIR")
    net = snn if is_binarized(snn) else binarize(snn, example)
    net.reset()
    with torch.no_grad():
        ShapeProp(net.body).propagate(example)
    net.reset()
    nodes, edges = _mapped(nir, net.body)
    losses = reader_losses(net, profile, sleep) + rewrite(nir, profile, nodes, edges)
    meta = {
        "ann2snn": {
            "profile": profile,
            "dt": spec.dt,
            "flatten": spec.flatten,
            "format": FORMAT,
            "neuron": snn.neuron,
            "layers": list(net.layers),
            "schedule": {"sleep": int(sleep)},
            "reader_losses": losses,
        }
    }
    arrays = sum(
        a.nbytes
        for node in nodes.values()
        for a in vars(node).values()
        if isinstance(a, np.ndarray)
    )
    check_free_space(path, arrays, "the NIR file")
    with staged_output(path) as tmp:  # an existing file is replaced whole, or not at all
        nir.write(str(tmp), nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta))
        if spec.schema == "1.0.4":
            to_schema_104(tmp)
    return losses


def _mapped(nir: Any, gm: fx.GraphModule) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The traced deploy form (shapes propagated) as NIR nodes and edges, one node per layer
    through the mapper table; ops that pass their input through map to no node."""
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
    return nodes, edges


# ----------------------------------------------------------------------------- import

#: The most bytes of arrays `import_nir` reads from one file (``max_bytes`` overrides): the
#: sizes a file declares are checked before anything is read, so a small file of
#: compressed giant arrays cannot make the reader allocate without bound.
MAX_IMPORT_BYTES = 1 << 30
#: The most members a group neuron may have in an imported file (ann2snn writes τ ≤ L).
MAX_MEMBERS = 4096


class NIRImportError(ValueError):
    """A NIR file that `import_nir` refuses: named, with what is wrong, in NIR's terms."""


class PlainNIRIF(SpikingNeuron):
    """NIR's IF as a reader runs it, in discrete time: ``v ← v + r·x`` (``r`` here is NIR's
    r·dt); spikes where v reaches θ (``v > θ`` as NIR specifies, ``v ≥ θ`` for inclusive
    readers; ⌊v/θ⌋ of them for multi-spike readers, else one); then ``v ← v_reset`` or
    ``v ← v − θ·spikes``; optionally ``v`` held at ≥ −θ; v(0) = 0. What `import_nir` runs
    for an IF node without ann2snn's metadata, with ``metadata=False``, or as ``reader``
    runs it (`ReaderNeuron`)."""

    def __init__(
        self,
        threshold: float,
        r: float = 1.0,
        v_reset: float = 0.0,
        runs: ReaderNeuron = NIR_SPEC,
        **kwargs: Any,
    ):
        super().__init__(threshold, **kwargs)
        self.r, self.v_reset, self.runs = float(r), float(v_reset), runs

    @staticmethod
    def kernel(
        v: Tensor,
        x: Tensor,
        out: Tensor,
        theta: Tensor,
        r: float,
        v_reset: float,
        subtract: bool,
        inclusive: bool,
        multi: bool,
        floor: bool,
    ) -> Tensor:
        v.add_(x, alpha=r)
        if multi:  # sinabs' MultiSpike: (v > 0)·trunc(v/θ)
            torch.div(v.clamp(min=0), theta, rounding_mode="floor", out=out)
        else:
            (torch.ge if inclusive else torch.gt)(v, theta, out=out)
        if subtract:
            v.sub_(out * theta)
        else:
            v.mul_(1 - out).add_(out * v_reset)
        if floor:
            v.clamp_(min=-theta)
        return out.mul_(theta)  # emitted value θ per spike; `binary` turns it into counts

    def kernel_args(self) -> tuple:
        run = self.runs
        subtract = run.reset == "subtract"
        return (
            self.threshold,
            self.r,
            self.v_reset,
            subtract,
            run.inclusive,
            run.multi_spike,
            run.floor,
        )


def _array(key: str, field: str, value: Any) -> np.ndarray:
    """A node's array, refused when it holds NaN/inf (a NaN weight gives finite, wrong
    outputs downstream of a threshold)."""
    a = np.asarray(value, dtype=np.float64)
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise NIRImportError(f"import_nir: node {key!r}: {field} holds {bad} NaN/inf value(s)")
    return a


def _uniform(key: str, field: str, value: Any) -> float:
    """One number for a per-neuron field ann2snn's neurons hold per layer; refused when
    the file gives different values to different neurons."""
    a = _array(key, field, value).reshape(-1)
    if a.size == 0 or not np.all(a == a[0]):
        raise NIRImportError(
            f"import_nir: node {key!r}: per-neuron {field} ({a.size} values, from "
            f"{a.min() if a.size else '-'} to {a.max() if a.size else '-'}) is not supported; "
            "ann2snn's IF neurons hold one value per layer"
        )
    return float(a[0])


@dataclass(frozen=True)
class _Reading:
    """How `import_nir` reads a file: its profile's step and flatten convention, and
    whose neuron runs its IF nodes (None: ann2snn's, from the metadata)."""

    metadata: bool
    runs: ReaderNeuron | None
    dt: float
    flatten: str


#: A LIF node with τ/dt at least this runs as an IF (its leak, dt/τ per step, is below
#: float32's resolution of a membrane near θ).
LEAK_FREE_TAU_STEPS = 1e6


def _conventions(meta: dict) -> tuple[float, str]:
    """The step and the flatten convention the file's profile wrote with (graph metadata;
    dt = 1 and per-sample flatten without it), checked."""
    dt, flatten = meta.get("dt", 1.0), meta.get("flatten", "sample")
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        dt = float("nan")
    if not (np.isfinite(dt) and dt > 0):
        raise NIRImportError(
            f"import_nir: graph metadata ann2snn.dt = {meta.get('dt')}; a time step is a "
            "finite number > 0"
        )
    if flatten not in ("sample", "torch"):
        raise NIRImportError(
            f"import_nir: graph metadata ann2snn.flatten = {flatten!r}; allowed: 'sample', 'torch'"
        )
    return dt, str(flatten)


def _gain(key: str, node: Any, nir: Any, dt: float) -> float:
    """What one step adds to v per unit input: r·dt for IF, r·dt/τ for a leak-free LIF."""
    r = _uniform(key, "r", node.r)
    if not isinstance(node, nir.LIF):
        return r * dt
    tau = _uniform(key, "tau", node.tau)
    if tau / dt < LEAK_FREE_TAU_STEPS or _uniform(key, "v_leak", node.v_leak) != 0:
        raise NIRImportError(
            f"import_nir: node {key!r}: a leaky LIF (τ/dt = {tau / dt:g}); ann2snn runs "
            f"LIF nodes only without leak (v_leak = 0, τ/dt ≥ {LEAK_FREE_TAU_STEPS:g})"
        )
    return r * dt / tau


def _if_module(nir, key: str, node: Any, meta: dict, how: _Reading) -> SpikingNeuron:
    """An IF (or leak-free LIF) node: ann2snn's neuron as its metadata describes it, else
    the reader's IF."""
    theta = _uniform(key, "v_threshold", node.v_threshold)
    if theta <= 0:
        raise NIRImportError(f"import_nir: node {key!r}: v_threshold must be > 0, got {theta}")
    gain = _gain(key, node, nir, how.dt)
    v_reset = _uniform(key, "v_reset", node.v_reset) if node.v_reset is not None else 0.0
    if how.runs is not None or not meta:
        n: SpikingNeuron = PlainNIRIF(
            theta, r=gain, v_reset=v_reset, runs=how.runs or NIR_SPEC, v_init=0.0
        )
    else:
        if not np.isclose(gain, 1.0, rtol=1e-6, atol=0):
            raise NIRImportError(
                f"import_nir: node {key!r}: one step adds {gain:g}·x to v in an ann2snn IF "
                "node (written to add x: r·dt = 1)"
            )
        if meta.get("neuron") == "cif":
            n = ConsistentIF(
                theta,
                v_init=0.0,
                gamma=int(meta.get("gamma", 1)),
                negative_spikes=bool(meta.get("negative_spikes", 1)),
            )
        else:
            n = IFNeuron(theta, v_init=0.0)
        if "v_init" in meta:  # per neuron [C, ...]: broadcasts over the batch
            n.v_offset = torch.as_tensor(_array(key, "metadata v_init", meta["v_init"]))
        else:
            n.v_offset = torch.zeros(())
        n.v_offset = n.v_offset.to(torch.float32)
    n.binary = True
    return n


def _members(key: str, meta: dict) -> nn.Module:
    members = meta.get("members")
    if not isinstance(members, int | np.integer) or not 1 <= int(members) <= MAX_MEMBERS:
        shown = int(members) if isinstance(members, np.integer) else members
        raise NIRImportError(
            f"import_nir: node {key!r}: metadata members = {shown!r}; a group neuron has "
            f"1 to {MAX_MEMBERS} members"
        )
    return (MemberExpand if meta["op"] == "MemberExpand" else MemberSum)(int(members))


def _module_for(nir, key: str, node: Any, how: _Reading) -> nn.Module:
    """The inverse table: one NIR node → one torch module (without metadata: as a reader
    without ann2snn's metadata: plain NIR IF neurons, additions still summed)."""
    meta = (node.metadata or {}).get("ann2snn", {}) if how.metadata else {}
    t = lambda f, a: torch.as_tensor(_array(key, f, a), dtype=torch.float32)  # noqa: E731
    if isinstance(node, nir.IF | nir.LIF):
        return _if_module(nir, key, node, meta, how)
    if meta.get("op") in ("MemberExpand", "MemberSum"):
        return _members(key, meta)
    if meta.get("op") == "add":  # a residual sum: the edges already add
        return nn.Identity()
    if isinstance(node, nir.Conv2d):
        w = t("weight", node.weight)
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
            conv.bias.copy_(t("bias", node.bias))
        return conv
    if isinstance(node, nir.Affine | nir.Linear):
        w = t("weight", node.weight)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        with torch.no_grad():
            lin.weight.copy_(w)
            if isinstance(node, nir.Affine):
                lin.bias.copy_(t("bias", node.bias))
        return lin
    if isinstance(node, nir.AvgPool2d | nir.SumPool2d):
        as_tuple = lambda a: tuple(int(v) for v in np.atleast_1d(a))  # noqa: E731
        # A sum pool is an average pool that does not divide (count_include_pad: NIR pads
        # with zeros).
        divisor = {"divisor_override": 1} if isinstance(node, nir.SumPool2d) else {}
        return nn.AvgPool2d(
            as_tuple(node.kernel_size), as_tuple(node.stride), as_tuple(node.padding), **divisor
        )
    if isinstance(node, nir.Flatten):  # start_dim per sample, or as torch counts it
        if how.flatten == "torch":
            return nn.Flatten(int(node.start_dim), int(node.end_dim))
        return nn.Flatten(int(node.start_dim) + 1, -1)
    if isinstance(node, nir.Scale):
        return SpikeScale(_uniform(key, "scale", node.scale))
    raise NIRImportError(
        f"import_nir: node {key!r}: no ann2snn module for NIR {type(node).__name__}"
    )


def _scan_file(path: Path, max_bytes: int) -> None:
    """Before anything is read: a regular HDF5 file whose arrays, as declared, fit."""
    if not path.is_file():  # a folder, a missing file, a FIFO, /dev/zero: never read
        raise FileNotFoundError(f"import_nir: no NIR file at {path} (not a regular file)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        what = "is empty" if not head else f"starts with {head!r}"
        raise NIRImportError(
            f"import_nir: {path} is not a NIR file: NIR files are HDF5, which start with "
            f"b'\\x89HDF'; this one {what}"
        )
    import h5py  # nir's own dependency

    declared = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda _, obj: (
                declared.append(obj.size * obj.dtype.itemsize)
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    if sum(declared) > max_bytes:
        raise NIRImportError(
            f"import_nir: {path} declares {sum(declared) / 2**20:.1f} MiB of arrays, more "
            f"than max_bytes = {max_bytes / 2**20:.0f} MiB; pass a larger max_bytes only for "
            "a file you trust"
        )


def _check_graph(nir, graph: Any) -> dict[str, list[str]]:
    """{node: the nodes feeding it}, for a graph with one Input, one Output, edges between
    nodes that exist, and no node that nothing feeds."""
    for kind in (nir.Input, nir.Output):
        found = [k for k, n in graph.nodes.items() if isinstance(n, kind)]
        if len(found) != 1:
            raise NIRImportError(
                f"import_nir: the graph has {len(found)} {kind.__name__} nodes "
                f"({', '.join(map(repr, found)) or 'none'}); ann2snn runs graphs with exactly one"
            )
    incoming: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for src, dst in graph.edges:
        for end in (src, dst):
            if end not in graph.nodes:
                raise NIRImportError(f"import_nir: edge {src!r} → {dst!r} names no node {end!r}")
        incoming[dst].append(src)
    for key, node in graph.nodes.items():
        if isinstance(node, nir.Input) and incoming[key]:
            raise NIRImportError(f"import_nir: the Input node {key!r} has incoming edges")
        if not isinstance(node, nir.Input) and not incoming[key]:
            raise NIRImportError(f"import_nir: node {key!r} has no incoming edge (an orphan)")
    return incoming


def _topological(nodes: dict[str, Any], incoming: dict[str, list[str]]) -> list[str]:
    """Kahn's order (iterative: a 5,000-node chain is no deeper than a 2-node one)."""
    waiting = {k: len(v) for k, v in incoming.items()}
    users: dict[str, list[str]] = {k: [] for k in nodes}
    for dst, srcs in incoming.items():
        for src in srcs:
            users[src].append(dst)
    ready = [k for k, n in waiting.items() if n == 0]
    done: list[str] = []
    while ready:
        k = ready.pop()
        done.append(k)
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(done) != len(nodes):
        stuck = sorted(k for k in nodes if waiting[k] > 0)
        raise NIRImportError(
            f"import_nir: the graph has a cycle through {', '.join(map(repr, stuck[:5]))} "
            "(recurrent NIR graphs are not supported)"
        )
    return done


def _module_name(key: str, taken: set[str]) -> str:
    """A module name for a NIR node key, unique even where two keys sanitise alike."""
    base = "n_" + "".join(c if c.isalnum() else "_" for c in key)
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def import_nir(
    path: str | Path,
    metadata: bool = True,
    max_bytes: int = MAX_IMPORT_BYTES,
    reader: str | None = None,
) -> SpikingNetwork:
    """Read a NIR graph (written by `export_nir`, or any graph of the supported nodes:
    Input, Output, Affine, Linear, Conv2d, AvgPool2d, Flatten, Scale, IF) into a
    binarized `SpikingNetwork`. Nodes with several incoming edges sum their inputs.

    The file is checked before it is used: a regular HDF5 file whose declared arrays fit
    ``max_bytes``; one Input and one Output, edges between existing nodes, no orphan and
    no cycle; finite weights; per-neuron IF parameters uniform (refused by name if not).
    IF nodes with ann2snn's metadata run as ann2snn wrote them (reset by subtraction,
    v(0)); other IF nodes, and all with ``metadata=False``, run as NIR specifies them
    (``v ← v + r·dt·x``, spike when ``v > v_threshold``, reset to ``v_reset``, v(0) = 0,
    dt as the file's profile says, else 1): what a plain NIR reader does. ``reader`` (a
    key of `NIR_PROFILES`) runs the IF nodes as that reader runs them instead (e.g.
    ``"sinabs"``: reset by subtraction, several spikes a step, v ≥ −θ): a prediction of
    what the reader will compute, tested against the readers themselves.

    Raises:
        NIRImportError: naming the node and what is wrong with it.
    """
    nir = _nir()
    if reader is not None:
        one_of("import_nir: reader", reader, NIR_PROFILES)
    path = Path(path)
    _scan_file(path, max_bytes)
    try:  # the structure is checked here first; nir's type check runs after it
        graph = nir.read(str(path), type_check=False)
    except Exception as e:  # noqa: BLE001 - a damaged file is named, whatever broke
        raise NIRImportError(f"import_nir: {path}: not a readable NIR graph ({e})") from None
    incoming = _check_graph(nir, graph)
    order = _topological(graph.nodes, incoming)
    try:  # what nir.read does with type_check, once the structure is known to be sound
        graph.infer_types()
        graph.check_types()
    except Exception as e:  # noqa: BLE001
        raise NIRImportError(f"import_nir: {path}: node shapes do not fit together ({e})") from None
    meta = (graph.metadata or {}).get("ann2snn", {})
    how = _Reading(metadata, NIR_PROFILES[reader].runs if reader else None, *_conventions(meta))
    body, layers = _traced(nir, graph, order, incoming, how)
    config = {
        "binary": True,
        "source": "nir",
        "folded_scales": None,
        "sleep": int(meta.get("schedule", {}).get("sleep", 0)),
    }
    return SpikingNetwork(body, str(meta.get("neuron", "if")), layers, config)


def _traced(
    nir: Any, graph: Any, order: list[str], incoming: dict[str, list[str]], how: _Reading
) -> tuple[fx.GraphModule, list[str]]:
    """The checked graph as a traced module (nodes in ``order``; a node with several
    inputs sums them) and the names of its spiking layers."""
    root, g = nn.Module(), fx.Graph()
    value: dict[str, fx.Node] = {}
    taken: set[str] = set()
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
        name = _module_name(key, taken)
        module = _module_for(nir, key, node, how)
        root.add_module(name, module)
        value[key] = g.call_module(name, (total,))
        if isinstance(module, SpikingNeuron):
            layers.append(name)
    return fx.GraphModule(root, g), layers
