"""Run a converted SNN in SpikingJelly, exactly: its own IF neurons, reset by subtraction.

NIR's IF resets to a value and starts from v = 0, so a SpikingJelly reading of a NIR file
(`import_from_nir`) runs another neuron than ann2snn's (docs/deploy.md). SpikingJelly's
``IFNode(v_reset=None)`` resets by subtraction and holds a settable membrane, which is
ann2snn's IF neuron: `to_spikingjelly` takes the deploy form (`binarize`: 0/1 spikes, θ in the
weights, a group neuron as τ IF members with staggered v(0)), keeps its stateless layers
(plain torch modules, as SpikingJelly's single-step layers are) and puts a SpikingJelly
``IFNode`` in place of every neuron, its v(0) set per neuron at the first step after a
reset. The result runs step by step as any SpikingJelly network does
(``functional.reset_net``; one ``[B, ...]`` input per step) and its outputs equal ann2snn's
at every step (tested; `tests/test_interop.py`). Consistent-IF neurons (negative spikes, a
count cap) have no SpikingJelly counterpart and are refused by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nn.network import SpikingNetwork
from .binary import AdaptedNetwork, with_reader_neurons

__all__ = ["to_spikingjelly", "SpikingJellyNetwork"]


def _spikingjelly() -> Any:
    try:
        from spikingjelly.activation_based import functional, neuron
    except ImportError as e:
        raise ImportError(
            "to_spikingjelly needs SpikingJelly 2.x (`make integrations`, or "
            f"pip install spikingjelly loguru): {e}"
        ) from e
    return functional, neuron


class SpikingJellyNetwork(AdaptedNetwork):
    """A deploy-form network whose neurons are SpikingJelly ``IFNode``s (single-step):
    ``net(x)`` is one step, as a SpikingJelly network; `reset` (or SpikingJelly's
    ``functional.reset_net``) starts a new sample; ``run(x, T)``."""

    def __init__(self, body: nn.Module, initial: dict[str, Tensor]):
        super().__init__(body, initial, _set_initial)
        self._reset_net = _spikingjelly()[0].reset_net

    def reset(self) -> SpikingJellyNetwork:
        self._reset_net(self.body)
        return self


def _set_initial(v0: Tensor):
    """A pre-hook giving an ``IFNode`` its v(0) at the first step after a reset (its
    membrane is then a float, SpikingJelly's reset value)."""

    def hook(node: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        if not isinstance(node.v, Tensor) or node.v.shape != x.shape:
            node.v = torch.zeros_like(x) + v0.to(x.device, x.dtype)

    return hook


def to_spikingjelly(snn: SpikingNetwork, example: Tensor) -> SpikingJellyNetwork:
    """``snn`` as a network of SpikingJelly ``IFNode(v_reset=None)`` neurons.

    Args:
        snn: a converted network with IF or group neurons (calibrated or not; binarized or
            not: it is binarized here first, ``example`` giving the shapes).
        example: one input batch ``[B, ...]``.

    Returns:
        A `SpikingJellyNetwork`: step it with ``net(x)`` after ``net.reset()``, or call
        ``net.run(x, T)``.
    """
    _, neuron = _spikingjelly()
    body, initial = with_reader_neurons(
        snn,
        example,
        "SpikingJelly",
        lambda theta: neuron.IFNode(v_threshold=theta, v_reset=None, step_mode="s"),
    )
    return SpikingJellyNetwork(body, initial)
