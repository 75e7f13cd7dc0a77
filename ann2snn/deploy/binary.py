"""The deploy form of a converted network: binary spikes, θ folded into the weights.

`ann2snn.convert` gives neurons that emit the value θ per spike, which is what makes the
SNN's time average comparable with the ANN. Neuromorphic hardware and other simulators
expect spikes of 1 (or −1) with θ carried by the synapses. `binarize` rewrites the graph:

* IF and consistent-IF neurons emit their spike counts (0/1; CIF 0/±1); a `SpikeScale`
  of θ after each restores the value;
* a group neuron (τ members with thresholds iθ/τ on one membrane) becomes what it is on
  a chip: τ·C binary IF neurons of threshold θ whose initial membranes are staggered by
  θ/τ (member j starts at v(0) + j·θ/τ; by Hermite's identity Σⱼ ⌊(a + jθ/τ)/θ⌋ =
  ⌊a/(θ/τ)⌋, so their summed spikes are the group's count at every step), fed by a
  `MemberExpand` (each member sees the channel's input) and read by a `MemberSum`;
* BatchNorm that follows a conv/linear is folded into it (exact in eval mode), and
  each `SpikeScale` is then folded into the weights of the conv/linear layer that reads
  it, through average pooling, flatten and member sums (linear maps that commute with a
  scale). A scale that reaches a residual addition, a spiking max-pool or the output
  stays as an explicit scale node (NIR's ``Scale``).

The result's outputs equal the unbinarized network's at every step (up to float
rounding of the folded weights), and every neuron's output holds only 0/±1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..conversion.passes import PassContext, fold_batchnorm
from ..nn.network import SpikingNetwork
from ..nn.neurons import ConsistentIF, GroupNeuron, IFNeuron, SpikingNeuron
from ..nn.state import state_tensor
from ..simulation.schedule import presim_steps

__all__ = [
    "with_reader_neurons",
    "AdaptedNetwork",
    "refuse_presimulation",
    "binarize",
    "SpikeScale",
    "MemberExpand",
    "MemberSum",
    "is_binarized",
]


class SpikeScale(nn.Module):
    """``x ↦ scale·x`` (a spike's value θ, or a member's θ/τ); stateless."""

    def __init__(self, scale: float | Tensor):
        super().__init__()
        self.register_buffer("scale", state_tensor(scale).reshape(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.6g}"


class MemberExpand(nn.Module):
    """``[N, C, ...]`` → ``[N, τ·C, ...]``: every member j of channel c sees c's input
    (member-major: channel j·C + c)."""

    def __init__(self, members: int):
        super().__init__()
        self.members = int(members)

    def forward(self, x: Tensor) -> Tensor:
        return x.repeat(1, self.members, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"members={self.members}"


class MemberSum(nn.Module):
    """``[N, τ·C, ...]`` → ``[N, C, ...]``: the sum of each channel's τ member spikes."""

    def __init__(self, members: int):
        super().__init__()
        self.members = int(members)

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (self.members, -1)).sum(1)

    def extra_repr(self) -> str:
        return f"members={self.members}"


def refuse_presimulation(snn: nn.Module, fmt: str) -> None:
    """Exports cannot say COS's per-sample pre-simulation (a data-dependent v(0)): refuse
    a network calibrated with ``method="cos"`` by name instead of writing a different one."""
    if rho := presim_steps(snn):
        layers = sum(1 for m in snn.modules() if getattr(m, "presim", 0))
        raise ValueError(
            f"{fmt} export: this network uses offset-spike calibration (COS: {layers} "
            f"layers pre-simulate {rho} steps "
            "per sample before running), which no exported graph can express; export the "
            "network before calibrate(..., method='cos'), or calibrate with 'potential'"
        )


def is_binarized(net: nn.Module) -> bool:
    """True for a network `binarize` returned."""
    return isinstance(net, SpikingNetwork) and bool(net.config.get("binary"))


def _binary_if(theta: Tensor, v0: Tensor, members: int, channels: int, rank: int) -> IFNeuron:
    """τ·C binary IF members of threshold θ with staggered v(0): ``[τ·C, 1, …]`` from a
    v(0) per layer or per channel, ``[τ·C, H, W]`` from one per neuron (a calibration's)."""
    n = IFNeuron(theta, v_init=0.0)
    n.binary = True
    tail = (1,) * max(rank - 2, 0)
    v0 = v0.to(theta.dtype)
    if v0.numel() in (1, channels):
        base = v0.reshape(-1).expand(channels).reshape((channels, *tail))
    else:  # per neuron: [C, H, W] (or with a leading 1)
        base = v0.reshape((channels, *v0.shape[v0.dim() - len(tail) :]))
    base = base.repeat(members, *(1,) * len(tail))  # member j's block: channels jC..jC+C-1
    j = torch.arange(members, dtype=theta.dtype).repeat_interleave(channels)  # [τ·C]
    n.v_offset = base + (j * (theta / members)).reshape((-1, *tail))
    return n


def _replace_group(
    gm: fx.GraphModule, node: fx.Node, gn: GroupNeuron, rank: int, channels: int
) -> fx.Node:
    """GN site → MemberExpand → binary IF members → MemberSum; returns the sum's node."""
    name = node.target
    v0 = gn.initial_membrane()
    members = _binary_if(gn.threshold, v0, gn.tau, channels, rank)
    members.ann_activation = gn.ann_activation
    gm.add_submodule(f"{name}_expand".replace(".", "_"), MemberExpand(gn.tau))
    gm.add_submodule(f"{name}_members".replace(".", "_"), members)
    gm.add_submodule(f"{name}_sum".replace(".", "_"), MemberSum(gn.tau))
    g = gm.graph
    with g.inserting_before(node):
        expand = g.call_module(f"{name}_expand".replace(".", "_"), node.args)
        spikes = g.call_module(f"{name}_members".replace(".", "_"), (expand,))
        total = g.call_module(f"{name}_sum".replace(".", "_"), (spikes,))
    node.replace_all_uses_with(total)
    g.erase_node(node)
    gm.delete_submodule(name)
    return total


# Ops a scale commutes with on the way to the layer that absorbs it (linear, shape-only).
_PASS_FUNCS = {torch.flatten, F.avg_pool2d, F.adaptive_avg_pool2d, torch.reshape}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}
_PASS_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, MemberSum)
_ABSORB = (nn.modules.conv._ConvNd, nn.Linear)


def _absorber(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The conv/linear that alone reads ``node`` through scale-commuting ops, if any."""
    modules = dict(gm.named_modules())
    cur = node
    while len(cur.users) == 1:
        nxt = next(iter(cur.users))
        if nxt.args[:1] != (cur,):
            return None
        if nxt.op == "call_module":
            mod = modules[nxt.target]
            if isinstance(mod, _ABSORB):
                return mod
            if not isinstance(mod, _PASS_MODULES):
                return None
        elif nxt.op == "call_function" and nxt.target not in _PASS_FUNCS:
            return None
        elif nxt.op == "call_method" and nxt.target not in _PASS_METHODS:
            return None
        elif nxt.op not in ("call_module", "call_function", "call_method"):
            return None
        cur = nxt
    return None


def _fold_scales(gm: fx.GraphModule) -> int:
    """Fold every `SpikeScale` into the conv/linear that reads it; returns how many."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), SpikeScale):
            continue
        layer = _absorber(gm, node)
        if layer is None:
            continue
        with torch.no_grad():
            # W·(s·x) + b = (s·W)·x + b: the scale moves into the weights, not the bias.
            layer.weight.mul_(gm.get_submodule(node.target).scale.to(layer.weight.dtype))
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        folded += 1
    return folded


def _shapes(net: SpikingNetwork, example: Tensor) -> dict[str, torch.Size]:
    """Input shape ``[B, C, ...]`` of every neuron for one example batch (one step)."""
    shapes: dict[str, torch.Size] = {}
    handles = [
        m.register_forward_pre_hook(lambda m, a, name=name: shapes.__setitem__(name, a[0].shape))
        for name, m in net.spiking_layers()
    ]
    try:
        with torch.no_grad():
            net.reset()
            net(example.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
        net.reset()
    return shapes


def binarize(snn: SpikingNetwork, example: Tensor, fold: bool = True) -> SpikingNetwork:
    """The deploy form of ``snn`` (a new network; ``snn`` is not changed): neurons emit
    0/1 (consistent IF: 0/±1; group neurons: τ binary members each), θ folded into the
    weights that read the spikes where ``fold`` (else kept as `SpikeScale` nodes).

    Args:
        snn: a converted network (`ann2snn.convert`), possibly calibrated.
        example: one input batch ``[B, ...]`` (for the neurons' channel counts).
        fold: fold the scales into the next conv/linear layer where a path allows it.

    Raises:
        ValueError: for a network that cannot be rewritten (not a graph, a neuron type
            without a binary form), naming it.
    """
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            "binarize: snn must be a SpikingNetwork (from ann2snn.convert), got "
            f"{type(snn).__name__}"
        )
    if is_binarized(snn):
        raise ValueError("binarize: the network is binarized already")
    net = copy.deepcopy(snn)
    if not isinstance(net.body, fx.GraphModule):
        raise ValueError(
            "binarize: the network has no graph (it was not traced); binarize needs one"
        )
    for name, n in net.spiking_layers():
        if type(n) not in (IFNeuron, GroupNeuron, ConsistentIF):
            raise ValueError(
                f"binarize: neuron {name!r} is a {type(n).__name__}; binary forms exist for "
                "IFNeuron, GroupNeuron and ConsistentIF"
            )
    # BatchNorm after a conv/linear goes into its weights too (exact in eval mode).
    net.body = fold_batchnorm(net.body.eval(), PassContext())
    shapes = _shapes(net, example)
    gm: fx.GraphModule = net.body
    layers: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in net.layers:
            continue
        n: SpikingNeuron = gm.get_submodule(node.target)
        shape = shapes[node.target]
        channels, rank = (shape[1] if len(shape) > 1 else 1), len(shape)
        if isinstance(n, GroupNeuron):
            out = _replace_group(gm, node, n, rank, channels)
            layers.append(f"{node.target}_members".replace(".", "_"))
            scale_value = n.quantum
        else:
            n.binary = True
            out = node
            layers.append(node.target)
            scale_value = n.threshold
        scale_name = f"{node.target}_scale".replace(".", "_")
        gm.add_submodule(scale_name, SpikeScale(scale_value.detach().clone()))
        with gm.graph.inserting_after(out):
            scaled = gm.graph.call_module(scale_name, (out,))
        out.replace_all_uses_with(scaled)
        scaled.args = (out,)
    folded = _fold_scales(gm) if fold else 0
    gm.graph.lint()
    gm.recompile()
    net.layers = layers
    net.config = {**net.config, "binary": True, "folded_scales": folded}
    return net


class AdaptedNetwork(nn.Module):
    """A deploy-form network whose neurons are another simulator's (`to_spikingjelly`,
    `to_sinabs`), run one step per call as that simulator runs it.

    ``forward(x)``: one step, ``[B, ...]`` → ``[B, out...]``; `reset` starts a new sample
    (each simulator its own way); ``run(x, T)`` resets and returns the mean output over T
    steps of input ``x``. ``initial`` maps each neuron's path to its v(0) (a scalar or per
    neuron ``[C, ...]``), given to the neuron by ``set_initial(v0)``, a forward pre-hook.
    """

    def __init__(
        self, body: nn.Module, initial: dict[str, Tensor], set_initial: Callable[[Tensor], Any]
    ):
        super().__init__()
        self.body = body
        for name, v0 in initial.items():
            self.body.get_submodule(name).register_forward_pre_hook(set_initial(v0))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def reset(self) -> AdaptedNetwork:
        raise NotImplementedError

    def run(self, x: Tensor, T: int) -> Tensor:
        """Mean output over ``T`` steps of the input batch ``x`` (after a reset)."""
        self.reset()
        with torch.no_grad():
            return torch.stack([self(x) for _ in range(T)]).mean(0)


def with_reader_neurons(
    snn: SpikingNetwork, example: Tensor, reader: str, make: Callable[[float], nn.Module]
) -> tuple[nn.Module, dict[str, Tensor]]:
    """The deploy form's body with ``make(θ)`` (a reader's IF neuron, reset by subtraction)
    in place of every neuron, and each neuron's v(0) by path (``[C, ...]`` or a scalar)."""
    refuse_presimulation(snn, reader)
    net = snn if is_binarized(snn) else binarize(snn, example)
    kinds = {type(n).__name__ for _, n in net.spiking_layers()}
    if kinds - {"IFNeuron"}:
        raise ValueError(
            f"{reader}: its IF neuron runs IF and group neurons (as IF members); this "
            f"network has {', '.join(sorted(kinds))}"
        )
    body = copy.deepcopy(net.body)
    initial: dict[str, Tensor] = {}
    for name, n in list(net.spiking_layers()):
        ours: IFNeuron = n
        parent, _, leaf = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, leaf, make(float(ours.threshold)))
        initial[name] = ours.initial_membrane().detach().clone().float()
    return body.eval(), initial
