"""Run a converted SNN in sinabs, exactly: its own IAF neurons with single spikes, reset by
subtraction, no membrane floor.

sinabs reading a NIR file (`sinabs.from_nir`) runs NIR's IF as ``IAFSqueeze`` with its
defaults, which are not ann2snn's neuron: several spikes a step (``MultiSpike``), the
membrane held at ≥ −θ, and v(0) = 0 (docs/deploy.md has what that costs). Its ``IAF`` takes
other rules: `to_sinabs` takes the deploy form (`binarize`: 0/1 spikes, θ in the weights, a
group neuron as τ IF members with staggered v(0)), keeps its stateless layers (plain torch
modules, as sinabs' networks are) and puts an ``IAFSqueeze(spike_fn=SingleSpike,
reset_fn=MembraneSubtract(), min_v_mem=None)`` in place of every neuron, its v(0) set
whenever its state starts. The network runs one step per call (``[B, ...]`` in, state kept
between calls, as sinabs layers keep it); its outputs equal ann2snn's at every step
(``tests/test_interop.py``, in the environment ``make interop`` gives sinabs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nn.network import SpikingNetwork
from .binary import AdaptedNetwork, with_reader_neurons

__all__ = ["to_sinabs", "SinabsNetwork"]


def _sinabs() -> Any:
    try:
        import sinabs.activation as activation
        import sinabs.layers as layers
    except ImportError as e:
        raise ImportError(
            f"to_sinabs needs sinabs 3.x (`make interop` puts it in .venv-interop): {e}"
        ) from e
    return layers, activation


class SinabsNetwork(AdaptedNetwork):
    """A deploy-form network whose neurons are sinabs ``IAFSqueeze`` layers: ``net(x)`` is
    one step (sinabs keeps the state between calls); `reset` starts a new sample;
    ``run(x, T)``."""

    def __init__(self, body: nn.Module, initial: dict[str, Tensor]):
        super().__init__(body, initial, _set_initial)
        self.neurons = [body.get_submodule(name) for name in initial]

    def reset(self) -> SinabsNetwork:
        """Empty every neuron's state: the next step starts it again, at v(0)."""
        for layer in self.neurons:
            for name, buffer in list(layer.named_buffers()):
                layer.register_buffer(name, torch.zeros(0, device=buffer.device))
        return self


def _set_initial(v0: Tensor):
    """A pre-hook starting an ``IAFSqueeze``'s state at v(0) when sinabs would start it at
    zero (its first step after a reset, or a new batch size)."""

    def hook(layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]  # [B·1, ...]: one step
        if not layer.is_state_initialised() or not layer.state_has_shape(x.shape):
            layer.init_state_with_shape(x.shape)
            layer.v_mem.data = torch.zeros_like(x) + v0.to(x.device, x.dtype)

    return hook


def to_sinabs(snn: SpikingNetwork, example: Tensor) -> SinabsNetwork:
    """``snn`` as a network of sinabs ``IAFSqueeze`` neurons (single spikes, reset by
    subtraction, no floor, v(0) per neuron).

    Args:
        snn: a converted network with IF or group neurons (calibrated or not; binarized or
            not: it is binarized here first, ``example`` giving the shapes).
        example: one input batch ``[B, ...]``.

    Returns:
        A `SinabsNetwork`: step it with ``net(x)`` after ``net.reset()``, or call
        ``net.run(x, T)``.
    """
    layers, activation = _sinabs()

    def iaf(theta: float) -> nn.Module:
        return layers.IAFSqueeze(
            num_timesteps=1,
            spike_threshold=theta,
            spike_fn=activation.SingleSpike,
            reset_fn=activation.MembraneSubtract(),
            min_v_mem=None,
        )

    body, initial = with_reader_neurons(snn, example, "sinabs", iaf)
    return SinabsNetwork(body, initial)
