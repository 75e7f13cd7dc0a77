"""`SpikingNetwork`: the ordinary ``nn.Module`` that `ann2snn.convert` returns.

It wraps the converted graph (``body``). Its forward is time-major: ``[T, B, ...]`` in,
``[T, B, out...]`` out. Stateless layers (conv, linear, BN, pooling, additions) see the T
steps folded into the batch, ``[T·B, ...]``, so one call costs about one ANN forward pass
of batch T·B; only the neurons loop over T. State persists across calls until
`reset` (so a long simulation can be fed in chunks of steps), and the same graph can run
as the source ANN (`ann_forward`), which is how diagnostics and noise calibration compare
the two layer by layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .neurons import SpikingNeuron
from .state import is_stateful_module, reset

__all__ = ["SpikingNetwork", "biases_off", "device_of", "eval_mode"]


def device_of(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for an empty module)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Every module (and submodule) in eval mode for the block; each gets back the mode
    it had, so evaluating never changes the caller's modules nor updates BatchNorm
    statistics."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def _stateful(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if is_stateful_module(m)]


class SpikingNetwork(nn.Module):
    """A converted spiking network.

    Attributes:
        body: the converted graph (a ``torch.fx.GraphModule``, or a module copy when the
            model could not be traced).
        neuron: registry name of the neuron type (``"if"``, ``"gn"``, ``"cif"``).
        layers: qualified names of the neurons, in execution order.
        config: the conversion options (JSON-able), for reports.
    """

    def __init__(self, body: nn.Module, neuron: str, layers: list[str], config: dict[str, Any]):
        super().__init__()
        self.body = body
        self.neuron = neuron
        self.layers = list(layers)
        self.config = dict(config)

    # --- time-major forward ---------------------------------------------------------------
    def forward(self, x_seq: Tensor) -> Tensor:
        """``[T, B, ...]`` → ``[T, B, out...]``; state carries over from the previous call."""
        if x_seq.dim() < 2:
            raise ValueError(
                f"expected time-major input [T, B, ...], got shape {tuple(x_seq.shape)}"
            )
        steps, batch = x_seq.shape[0], x_seq.shape[1]
        stateful = _stateful(self.body)
        for m in stateful:
            m.folded_steps = steps
        try:
            out = self.body(x_seq.reshape(steps * batch, *x_seq.shape[2:]))
        except RuntimeError as e:
            # Inside, stateless layers see [T·B, ...]: say what the user passed.
            raise RuntimeError(
                f"the spiking network failed on input of shape [T={steps}, B={batch}, "
                f"{', '.join(map(str, x_seq.shape[2:]))}] (one image: "
                f"{tuple(x_seq.shape[2:])}); its layers see the T·B = {steps * batch} "
                f"samples folded into one batch, as in the message below.\n{e}"
            ) from e
        finally:
            for m in stateful:
                m.folded_steps = None
        return out.unflatten(0, (steps, batch))

    def step(self, x: Tensor) -> Tensor:
        """One time step: ``[B, ...]`` → ``[B, out...]``."""
        return self.forward(x.unsqueeze(0))[0]

    def ann_forward(self, x: Tensor) -> Tensor:
        """Run the same graph as the source ANN (each neuron applies the activation it
        replaced, pools pool): ``[B, ...]`` → ``[B, out...]``. State is untouched."""
        with self.ann_mode():
            return self.body(x)

    @contextmanager
    def ann_mode(self) -> Iterator[None]:
        """Within the block, neurons behave as their source ANN activations."""
        stateful = _stateful(self.body)
        for m in stateful:
            m.ann_mode = True
        try:
            yield
        finally:
            for m in stateful:
                m.ann_mode = False

    @contextmanager
    def sleeping(self) -> Iterator[None]:
        """Input-free sleep phase (CASC): biases off and neurons' wake counters frozen."""
        flagged = [m for m in _stateful(self.body) if hasattr(m, "sleeping")]
        for m in flagged:
            m.sleeping = True
        try:
            with biases_off(self.body):
                yield
        finally:
            for m in flagged:
                m.sleeping = False

    # --- state ---------------------------------------------------------------------------
    def reset(self) -> SpikingNetwork:
        """Reset every neuron and spiking pool to its initial state."""
        reset(self.body)
        return self

    def spiking_layers(self) -> Iterator[tuple[str, SpikingNeuron]]:
        """(qualified name, neuron) in execution order."""
        mods = dict(self.body.named_modules())
        for name in self.layers:
            yield name, mods[name]

    def extra_repr(self) -> str:
        return f"neuron={self.neuron!r}, layers={len(self.layers)}"


@contextmanager
def biases_off(net: nn.Module) -> Iterator[None]:
    """Temporarily zero every bias: conv/linear biases and BatchNorm shifts.

    In eval mode BN computes ``(x − μ)/σ·γ + β``; with μ and β zeroed it is the pure
    scale ``x/σ·γ``, so an input-free step adds nothing but the propagated corrections.
    """
    saved: list[tuple[Tensor, Tensor]] = []
    with torch.no_grad():
        for m in net.modules():
            tensors: list[Tensor | None] = []
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
                tensors = [m.bias]
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                tensors = [m.bias, m.running_mean]
            for t in tensors:
                if t is not None:
                    saved.append((t, t.detach().clone()))
                    t.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
