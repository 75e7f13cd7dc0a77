"""A short spiking fine-tune: train the converted SNN itself through its T steps.

Conversion leaves a residual error at T = 1–2 that no per-channel constant removes; a
fraction of an epoch of training the SNN as an SNN does (the conversion-then-fine-tune
recipe of hybrid SNN training, e.g. Rathi et al., ICLR 2020). `finetune` runs each batch
through T steps with backpropagation through time: the IF dynamics are kept exactly (reset
by subtraction, v(0), binary spikes in the forward pass) and the spike's Heaviside step gets
a rectangular surrogate gradient of width θ. Weights and each layer's threshold θ train;
BatchNorm keeps its running statistics (frozen, as the ANN left them). The result is an
ordinary converted network of IF neurons with the new weights and thresholds: it simulates,
calibrates, binarizes and exports like the network it came from.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import positive_int
from ..nn.network import SpikingNetwork, device_of
from ..nn.neurons import IFNeuron
from ..nn.state import Stateful

__all__ = ["finetune", "to_ann", "FinetuneLog", "SurrogateIF"]


class _SpikeFn(torch.autograd.Function):
    """Heaviside(u) forward (u = v − θ; fire at u ≥ 0); a rectangle of height 1/w and
    width w around u = 0 backward (w = θ/2 by default: the gradient is nonzero within a
    quarter threshold of firing)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, width: Tensor) -> Tensor:
        ctx.save_for_backward(u, width)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        u, width = ctx.saved_tensors
        window = (u.abs() < width / 2).to(grad.dtype) / width
        return grad * window, None


class SurrogateIF(Stateful):
    """A differentiable stand-in for an `IFNeuron` during `finetune`: the same dynamics
    (``v ← v + x; s = [v ≥ θ]; v ← v − sθ; emit sθ``, v(0) = v_init·θ + v_offset), a
    trainable log θ, and a surrogate gradient for the spike. Runs ``[T, B, ...]`` only."""

    def __init__(self, neuron: IFNeuron, width: float = 0.5):
        super().__init__("m")
        self.width = float(width)  # the surrogate's width, in units of θ
        self.log_threshold = nn.Parameter(neuron.threshold.detach().clone().log())
        self.v_init = neuron.v_init
        offset = None if neuron.v_offset is None else neuron.v_offset.detach().clone()
        self.register_buffer("v_offset", offset)

    def multi_step(self, x_seq: Tensor) -> Tensor:
        theta = self.log_threshold.exp()
        v = self.v_init * theta + (0 if self.v_offset is None else self.v_offset)
        v = v + torch.zeros_like(x_seq[0])  # v(0) broadcast to one step's [B, ...]
        out = []
        for x in x_seq.unbind(0):
            v = v + x
            emitted = _SpikeFn.apply(v - theta, self.width * theta.detach()) * theta
            v = v - emitted  # reset by subtraction: the gradient flows through it
            out.append(emitted)
        return torch.stack(out)

    def reset(self) -> None:  # stateless between calls: every call starts from v(0)
        pass


@dataclass
class FinetuneLog:
    """What `finetune` did: the loss of every step, images seen, seconds."""

    T: int
    losses: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"T": self.T, "losses": self.losses, "images": self.images, "seconds": self.seconds}


def _put(net: SpikingNetwork, modules: dict[str, nn.Module]) -> None:
    """Set each module of ``modules`` at its path in ``net.body``."""
    for name, module in modules.items():
        parent, _, leaf = name.rpartition(".")
        setattr(net.body.get_submodule(parent) if parent else net.body, leaf, module)


def _positive(name: str, value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"finetune: {name} must be a positive number, got {value!r}")


def _check(snn: Any, T: int, epochs: float, lr: float, surrogate_width: float) -> None:
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            f"finetune: snn must be a SpikingNetwork (from ann2snn.convert), got "
            f"{type(snn).__name__}"
        )
    kinds = {type(n).__name__ for _, n in snn.spiking_layers()}
    if not kinds or kinds != {"IFNeuron"} or snn.config.get("binary"):
        raise ValueError(
            "finetune: trains IF neurons (neuron='if', before binarize); this network has "
            f"{', '.join(sorted(kinds)) or 'no neurons'}"
            + (" (binarized)" if snn.config.get("binary") else "")
        )
    positive_int("T", T)
    _positive("epochs", epochs)
    _positive("lr", lr)
    _positive("surrogate_width", surrogate_width)


def finetune(
    snn: SpikingNetwork,
    data: Sized | tuple[Tensor, Tensor],
    T: int,
    epochs: float = 1.0,
    lr: float = 2e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    thresholds: bool = True,
    cosine: bool = True,
    surrogate_width: float = 0.5,
    log: FinetuneLog | None = None,
) -> SpikingNetwork:
    """A copy of ``snn`` trained as an SNN at ``T`` steps (``snn`` is not changed).

    Args:
        snn: a converted network of IF neurons (`ann2snn.convert(model, "if")`, optionally
            calibrated with ``"bias"``/``"potential"``).
        data: training batches ``(x, y)`` — the training split, never the test split
            (e.g. ``create_loaders(...).train``) — or one ``(x, y)`` pair of tensors.
        T: the time steps the network will run at; each batch runs T steps, the loss is
            the cross-entropy of the time-averaged output.
        epochs: passes over ``data``; a fraction trains on that share of its batches (at
            T = 2 one pass costs about 2–3 ANN epochs of compute: see
            docs/benchmarks.md §9b for the measured seconds).
        lr, momentum, weight_decay: SGD's.
        thresholds: also train each layer's θ (as log θ); False keeps them.
        cosine: decay the learning rate from ``lr`` to 0 along a cosine over the run;
            False keeps it constant.
        surrogate_width: the width of the rectangular surrogate gradient, in units of θ
            (on the demo CNN's validation split, half an epoch: 0.5 gave 87.70 % at T = 1
            and 89.23 % at T = 2, against 86.92 / 88.93 % with 1.0 and 87.17 % at T = 1
            with 0.25).
        log: a `FinetuneLog` to fill (loss per step, images, seconds).

    Returns:
        A network of IF neurons with the trained weights and thresholds.
    """
    _check(snn, T, epochs, lr, surrogate_width)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        data = [data]  # one (x, y) batch, as simulate takes it
    net = copy.deepcopy(snn)
    log = log if log is not None else FinetuneLog(T)
    neurons = dict(net.spiking_layers())
    surrogates = {name: SurrogateIF(n, surrogate_width) for name, n in neurons.items()}
    _put(net, surrogates)
    for s in surrogates.values():
        s.log_threshold.requires_grad_(thresholds)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    dev = device_of(net)
    total = max(1, math.ceil(epochs * len(data)))
    # This run's steps and images (a `log` passed in may already hold another run's).
    start, step, seen = time.perf_counter(), 0, 0
    net.eval()  # BatchNorm: running statistics, frozen
    while step < total:
        for x, y in data:
            x, y = x.to(dev), y.to(dev)
            out = net(x.unsqueeze(0).expand(T, *x.shape)).mean(0)  # [B, classes]
            loss = F.cross_entropy(out, y)
            if cosine:  # lr · ½(1 + cos(π·step/steps))
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.losses.append(float(loss.detach()))
            log.images += int(x.shape[0])
            step, seen = step + 1, seen + int(x.shape[0])
            if step >= total:
                break
    log.seconds = time.perf_counter() - start
    with torch.no_grad():  # the IF neurons back, with the trained θ
        for name, neuron in neurons.items():
            neuron.threshold.copy_(surrogates[name].log_threshold.exp())
    _put(net, neurons)
    for p in net.parameters():
        p.requires_grad_(False)
    net.config = {**net.config, "finetune": {"T": T, "images": seen, "lr": lr}}
    return net.reset()


def to_ann(snn: SpikingNetwork, model: nn.Module) -> nn.Module:
    """A copy of ``model`` (the ANN ``snn`` was converted from) carrying ``snn``'s weights
    and, as each activation's λ, its neuron's θ: converting it with ``neuron="if"`` gives
    ``snn`` back (tested), so a fine-tuned SNN is saved as an ordinary run folder. A
    potential calibration's v(0) shift has no ANN counterpart and is not carried over."""
    if snn.config.get("binary"):
        raise ValueError("to_ann: a binarized network keeps θ in its weights; pass the SNN")
    ann = copy.deepcopy(model)
    own = ann.state_dict()
    weights = {
        k: v for k, v in snn.body.state_dict().items() if k in own and own[k].shape == v.shape
    }
    ann.load_state_dict(weights, strict=False)
    for name, neuron in snn.spiking_layers():
        act = ann.get_submodule(name)
        if not hasattr(act, "set_threshold"):
            raise ValueError(
                f"to_ann: the ANN's activation at {name!r} ({type(act).__name__}) has no "
                "trainable λ to carry the neuron's θ (a ReLU network's θ comes from data)"
            )
        with torch.no_grad():
            act.set_threshold(neuron.threshold)
    return ann
