"""Fan-out maps and MAC counts of a converted network: what one spike costs.

`fanout_maps(snn, x)` gives, for every spiking layer, a tensor of its per-image output
shape whose element ``e`` is the number of synaptic operations (accumulates) that one
spike event at ``e`` causes downstream: for a convolution that reads it,
``out_channels/groups × (kernel taps that touch e)`` — padding, stride and dilation exact,
so border elements have smaller fan-outs; for a Linear, ``out_features``. Stateless ops in
between are followed through to the weighted layers: a residual add passes the fan-out
of its result to both inputs, concatenation and reshapes route it, average pooling sums
the fan-outs of every window that contains ``e``, BatchNorm and scaling pass it on. A
spiking max-pool (`LIPool`) is a spiking layer of its own: the spikes it emits carry its
fan-out, the spikes that enter it none (a max is not a synaptic operation).

It is computed once, by one reverse pass over the captured graph on one example image:
each node's fan-out map is the sum, over its users, of what the user sends back. Routing
ops (reshape, permute, add, cat, slicing, upsampling) send back the vector-Jacobian
product of the fan-out (their Jacobians are 0/1, so it counts connections exactly).

`mac_counts(snn, x)` gives the source ANN's multiply-accumulates per image and the part
of them that reads the analog input (the first layers before any neuron), which an SNN
still computes as MACs at every wake step.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.neurons import SpikingNeuron
from ..nn.pooling import LIPool

__all__ = ["fanout_maps", "mac_counts", "record_values"]

_PASS_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Identity)
_PASS_FUNCS = {F.dropout, F.dropout2d, F.batch_norm}
_PASS_METHODS = {"contiguous", "to", "float", "half", "bfloat16", "type_as", "clone"}
_SCALE_FUNCS = {torch.mul, torch.div, "mul", "div", "mul_", "div_"}


def record_values(snn: nn.Module, x: Tensor) -> dict[fx.Node, Any]:
    """Every graph node's value for one image ``x[:1]`` (ANN mode: neurons act as their
    activations); `fanout_maps` and `mac_counts` can share one recording."""
    x = x[:1]
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n] = out
            return out

    with torch.no_grad(), snn.ann_mode():
        Recorder(snn.body).run(x)
    return values


def _is_tensor(v: Any) -> bool:
    return isinstance(v, Tensor) and v.is_floating_point()


def _conv_taps(
    x: Tensor, kernel: tuple[int, ...], stride, padding, dilation, output_padding=None
) -> Tensor:
    """``[spatial...]``: how many kernel taps of a convolution read each input position
    (for a transposed convolution, ``output_padding`` given: how many outputs each input
    position writes to)."""
    d = len(kernel)
    if output_padding is not None:
        convt = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]

        def conv(t, w, b, s, p, dil):
            return convt(t, w, b, s, p, output_padding, 1, dil)
    else:
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    probe = torch.zeros(
        (1, 1, *x.shape[-d:]), dtype=torch.float64, device=x.device, requires_grad=True
    )
    ones = torch.ones((1, 1, *kernel), dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        out = conv(probe, ones, None, stride, padding, dilation)
        (taps,) = torch.autograd.grad(out, probe, torch.ones_like(out))
    return taps[0, 0]


def _conv_fanout(
    x: Tensor, weight_shape: torch.Size, groups: int, stride, padding, dilation, output_padding=None
) -> Tensor:
    """Fan-out map of a convolution's input ``x`` (one image, ``[C, spatial...]``)."""
    kernel = tuple(weight_shape[2:])
    taps = _conv_taps(x, kernel, stride, padding, dilation, output_padding)
    # out_channels/groups outputs per tap (a transposed conv's weight is [C_in, C_out/g, k...]).
    per_group = weight_shape[1] if output_padding is not None else weight_shape[0] // groups
    return (taps * per_group).expand(x.shape)  # [C, spatial...], the same for every channel


def _vjp(fn, inputs: list[Tensor], cotangent: Any) -> list[Tensor | None]:
    """|vector-Jacobian product| of ``fn`` at ``inputs`` with ``cotangent`` (routing ops)."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    with torch.enable_grad():
        out = fn(*leaves)
        outs = out if isinstance(out, tuple | list) else (out,)
        cots = cotangent if isinstance(cotangent, tuple | list) else (cotangent,)
        pairs = [
            (o, c)
            for o, c in zip(outs, cots)
            if isinstance(o, Tensor) and o.requires_grad and c is not None
        ]
        if not pairs:
            return [None] * len(inputs)
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            leaves,
            [c.double().expand_as(o) for o, c in pairs],
            allow_unused=True,
        )
    return [None if g is None else g.abs() for g in grads]


def _sum_pool_adjoint(x: Tensor, cotangent: Tensor, kernel, stride, padding, ceil_mode) -> Tensor:
    """Σ of the cotangent over every (average-pool) window containing each input element."""
    d = x.dim() - 2
    if d == 1:  # avg_pool1d has no divisor_override: pool a [N, C, 1, L] image instead
        k = kernel if isinstance(kernel, int) else kernel[0]
        s = stride if isinstance(stride, int) else (stride[0] if stride else k)
        p = padding if isinstance(padding, int) else padding[0]

        def fn(t: Tensor) -> Tensor:
            return F.avg_pool2d(t.unsqueeze(2), (1, k), (1, s), (0, p), ceil_mode, True, 1).squeeze(
                2
            )
    else:
        pool = F.avg_pool2d if d == 2 else F.avg_pool3d

        def fn(t: Tensor) -> Tensor:
            return pool(t, kernel, stride or kernel, padding, ceil_mode, True, 1)

    (g,) = _vjp(fn, [x], cotangent)
    return g


def _adaptive_adjoint(x: Tensor, cotangent: Tensor) -> Tensor:
    """Adjoint of adaptive *sum* pooling: each input element gets the sum of the
    cotangent over the adaptive windows (torch's floor/ceil bounds) containing it."""
    d = cotangent.dim() - 2
    out = cotangent.double()
    for axis in range(d):
        n_in, n_out = x.shape[2 + axis], cotangent.shape[2 + axis]
        member = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
            member[i, start:end] = 1.0
        out = torch.movedim(torch.movedim(out, 2 + axis, -1) @ member, -1, 2 + axis)
    return out


def _send_back(
    node: fx.Node, module: nn.Module | None, values: dict, f_out: Any
) -> dict[fx.Node, Any]:
    """{input node: fan-out contribution} for one node whose output fan-out is ``f_out``."""
    inputs = [a for a in node.all_input_nodes if _is_tensor(values.get(a))]
    if not inputs:
        return {}
    x = values[inputs[0]]
    # Weighted layers: terminal (their outputs reach neurons, not synapses).
    terminal = _terminal_fanout(node, module, values, x)
    if terminal is not None:
        return {inputs[0]: terminal}
    if f_out is None:
        return {}
    # Fan-out passes unchanged through per-element affine maps.
    passes = (
        isinstance(module, _PASS_MODULES)
        or (node.op == "call_function" and node.target in _PASS_FUNCS | _SCALE_FUNCS)
        or (node.op == "call_method" and node.target in _PASS_METHODS | _SCALE_FUNCS)
    )
    if passes:
        return {inputs[0]: f_out.double().expand_as(x) if f_out.shape != x.shape else f_out}
    pooled = _pool_fanout(node, module, x, f_out)
    if pooled is not None:
        return {inputs[0]: pooled}
    if (node.op == "call_method" and node.target == "mean") or node.target is torch.mean:
        (g,) = _vjp(lambda t: _call(node, module, values, {inputs[0]: t}), [x], f_out)
        return {inputs[0]: None if g is None else g * (x.numel() / max(values[node].numel(), 1))}
    # Routing ops: the Jacobian is 0/1, its transpose counts the connections.
    grads = _vjp(
        lambda *ts: _call(node, module, values, dict(zip(inputs, ts))),
        [values[a] for a in inputs],
        f_out,
    )
    return {a: g for a, g in zip(inputs, grads)}


def _terminal_fanout(node: fx.Node, module: nn.Module | None, values: dict, x: Tensor) -> Any:
    """Synapses per input element of a weighted layer (or of a neuron reading spikes
    directly: one each); None for any other node."""
    if isinstance(module, nn.modules.conv._ConvNd):
        transposed = module.output_padding if module.transposed else None
        m = module
        fan = _conv_fanout(
            x[0], m.weight.shape, m.groups, m.stride, m.padding, m.dilation, transposed
        )
        return fan.unsqueeze(0)
    if isinstance(module, nn.Linear):
        return torch.full_like(x, float(module.out_features), dtype=torch.float64)
    if node.op == "call_function" and node.target in (F.conv1d, F.conv2d, F.conv3d):
        w = values[node.args[1]] if isinstance(node.args[1], fx.Node) else node.args[1]
        a = list(node.args) + [None] * 7
        kw = node.kwargs
        stride, padding = kw.get("stride", a[3] or 1), kw.get("padding", a[4] or 0)
        dilation, groups = kw.get("dilation", a[5] or 1), kw.get("groups", a[6] or 1)
        return _conv_fanout(x[0], w.shape, groups, stride, padding, dilation).unsqueeze(0)
    if node.op == "call_function" and node.target is F.linear:
        w = values[node.args[1]] if isinstance(node.args[1], fx.Node) else node.args[1]
        return torch.full_like(x, float(w.shape[0]), dtype=torch.float64)
    if isinstance(module, SpikingNeuron):
        return torch.ones_like(x, dtype=torch.float64)
    if isinstance(module, LIPool):
        # A spiking max-pool is no synapse: only the spikes it emits reach the next layer,
        # and they are charged with its own fan-out (its output is a spiking layer here).
        return torch.zeros_like(x, dtype=torch.float64)
    return None


def _pool_fanout(node: fx.Node, pool: nn.Module | None, x: Tensor, f_out: Tensor) -> Any:
    """A pool's fan-out per input element: every window the element belongs to; None for
    any other node."""
    if isinstance(pool, nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d) or (
        isinstance(pool, nn.MaxPool2d) and pool.dilation in (1, (1, 1))
    ):
        return _sum_pool_adjoint(
            x, f_out, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode
        )
    if isinstance(pool, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d) or (
        node.op == "call_function"
        and node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
    ):
        return _adaptive_adjoint(x, f_out)
    if node.op == "call_function" and node.target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
        a = list(node.args) + [None] * 5
        k = node.kwargs.get("kernel_size", a[1])
        s = node.kwargs.get("stride", a[2]) or k
        p = node.kwargs.get("padding", a[3] or 0)
        c = node.kwargs.get("ceil_mode", a[4] or False)
        return _sum_pool_adjoint(x, f_out, k, s, p, c)
    return None


def _call(node: fx.Node, module: nn.Module | None, values: dict, swap: dict) -> Any:
    """Re-run one node with some inputs replaced (for autograd)."""

    def arg(a: Any) -> Any:
        if isinstance(a, fx.Node):
            return swap.get(a, values.get(a))
        if isinstance(a, tuple | list):
            return type(a)(arg(b) for b in a)
        if isinstance(a, dict):
            return {k: arg(v) for k, v in a.items()}
        return a

    args, kwargs = arg(node.args), arg(node.kwargs)
    if node.op == "call_module":
        return module(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


@torch.no_grad()
def fanout_maps(snn: nn.Module, x: Tensor, values: dict | None = None) -> dict[str, Tensor]:
    """{spiking layer name: fan-out per output element, shape of one image's output}: every
    neuron and every spiking max-pool (`LIPool`; the spikes it passes on are charged to it,
    the spikes entering it cost nothing).

    ``snn`` is a `SpikingNetwork`; ``x`` one input image batch (only ``x[:1]`` is used);
    ``values``: its `record_values`, if already recorded.
    """
    gm: fx.GraphModule = snn.body
    values = values if values is not None else record_values(snn, x)
    modules = dict(gm.named_modules())
    fan: dict[fx.Node, Any] = {}
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        f_out = fan.get(node)
        if (
            node.op == "call_function"
            and node.target is operator.getitem
            and isinstance(values.get(node.args[0]), tuple | list)
        ):
            # An element of a tuple output (chunk, split): route to that slot.
            src, idx = node.args[0], node.args[1]
            slots = fan.setdefault(src, [None] * len(values[src]))
            if f_out is not None:
                slots[idx] = f_out if slots[idx] is None else slots[idx] + f_out
            continue
        for src, g in _send_back(node, module, values, f_out).items():
            if g is None:
                continue
            fan[src] = g if fan.get(src) is None else fan[src] + g
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], SpikingNeuron | LIPool):
            f = fan.get(node)
            out[node.target] = (torch.zeros_like(values[node]) if f is None else f)[0].float()
    return out


@torch.no_grad()
def mac_counts(snn: nn.Module, x: Tensor, values: dict | None = None) -> tuple[float, float]:
    """(the source ANN's MACs per image, the MACs of the layers that read the analog
    input) — weighted layers only (conv, linear); biases, BatchNorm and pooling are not
    multiply-accumulates of a weight and are not counted."""
    gm: fx.GraphModule = snn.body
    values = values if values is not None else record_values(snn, x)
    modules = dict(gm.named_modules())
    analog: set[fx.Node] = set()
    total = first = 0.0
    for node in gm.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        ins = [a for a in node.all_input_nodes if _is_tensor(values.get(a))]
        if node.op == "placeholder":
            analog.add(node)
            continue
        reads_analog = any(a in analog for a in ins)
        if reads_analog and not isinstance(module, SpikingNeuron | LIPool):
            analog.add(node)
        macs = 0.0
        out = values.get(node)
        if isinstance(module, nn.modules.conv._ConvNd) and isinstance(out, Tensor):
            k = math.prod(module.weight.shape[1:])  # in_channels/groups × kernel taps
            macs = out.numel() * k
        elif isinstance(module, nn.Linear) and isinstance(out, Tensor):
            macs = out.numel() * module.in_features
        elif node.op == "call_function" and node.target in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            w = values[node.args[1]] if isinstance(node.args[1], fx.Node) else node.args[1]
            macs = out.numel() * math.prod(w.shape[1:])
        total += macs
        if reads_analog:
            first += macs
    return total, first
