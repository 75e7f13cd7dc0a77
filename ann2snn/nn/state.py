"""The stateful contract: what a module with state across time steps promises.

`Stateful` is the one base of spiking neurons (`ann2snn.nn.neurons.SpikingNeuron`) and
spiking pools (`ann2snn.nn.pooling.LIPool`). It owns the three flags a network sets on its
stateful modules and the dispatch they drive, so no module reads or writes another's
private attributes:

* ``folded_steps``: T of a folded ``[T·B, ...]`` input, set by `SpikingNetwork` for one
  call (its stateless layers batch over time; only stateful modules loop over T);
* ``ann_mode``: behave as the ANN op this module stands for (`ann_forward`), no state;
* ``sleeping``: an input-free sleep step (CASC) is running.

A subclass implements `step` (one time step, ``[B, ...]`` → ``[B, ...]``), `reset` and
`ann_forward`; `forward` dispatches. Modules that do not subclass it can still declare
``is_stateful = True`` and a ``reset()`` to be reset and kept whole by graph capture.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Stateful", "is_stateful_module", "reset", "state_dtype", "state_tensor"]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype that state, thresholds and sums over time are kept in for values of
    ``dtype``: float32 for float32 and the half types (bf16/fp16 membranes would lose the
    small residues that carry information across steps), float64 for float64 (a float64
    network is simulated in float64 throughout, never rounded through float32)."""
    return torch.promote_types(dtype, torch.float32)


def state_tensor(value: object) -> torch.Tensor:
    """A detached copy of ``value`` (a number or tensor) in the state dtype of its own
    dtype: how thresholds and spike scales are stored (fp64 stays fp64, the rest fp32)."""
    t = torch.as_tensor(value).detach().clone()
    return t.to(state_dtype(t.dtype) if t.is_floating_point() else torch.float32)


class Stateful(nn.Module):
    """Base of modules whose output depends on earlier time steps.

    Attributes:
        step_mode: ``"s"`` (input ``[B, ...]``, one step per call) or ``"m"`` (input
            ``[T, B, ...]``, all steps in one call) when used outside a network.
        folded_steps: T of the folded ``[T·B, ...]`` input of the current network call.
        ann_mode: whether `forward` runs the ANN op (`ann_forward`) instead of a step.
        sleeping: whether the current steps are input-free sleep steps.
    """

    is_stateful = True

    def __init__(self, step_mode: str = "s") -> None:
        super().__init__()
        if step_mode not in ("s", "m"):
            raise ValueError(f"step_mode must be 's' or 'm', got {step_mode!r}")
        self.step_mode = step_mode
        self.folded_steps: int | None = None
        self.ann_mode = False
        self.sleeping = False

    def step(self, x: Tensor) -> Tensor:
        """One time step: ``[B, ...]`` → ``[B, ...]``."""
        raise NotImplementedError

    def ann_forward(self, x: Tensor) -> Tensor:
        """The ANN op this module stands for (no state involved)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the state; the next step starts from the initial state."""
        raise NotImplementedError

    def multi_step(self, x_seq: Tensor) -> Tensor:
        """``[T, B, ...]`` → ``[T, B, ...]``, looping `step` over time."""
        return torch.stack([self.step(x) for x in x_seq.unbind(0)])

    def forward(self, x: Tensor) -> Tensor:
        if self.ann_mode:
            return self.ann_forward(x)
        if self.folded_steps is not None:
            # Folded [T·B, ...] from a network whose stateless layers batch over time.
            return self.multi_step(x.unflatten(0, (self.folded_steps, -1))).flatten(0, 1)
        if self.step_mode == "m":
            return self.multi_step(x)
        return self.step(x)

    def unfold(self, out: Tensor) -> Tensor:
        """A forward output as time-major ``[T, B, ...]`` (T = 1 for a single step): what
        observers (activity monitors, gap measurements) hook onto."""
        if self.folded_steps is not None:
            return out.unflatten(0, (self.folded_steps, -1))
        return out if self.step_mode == "m" else out.unsqueeze(0)


def is_stateful_module(m: nn.Module) -> bool:
    """`Stateful` modules and other modules that declare ``is_stateful = True``: what
    `reset` resets and graph capture keeps as one node."""
    return isinstance(m, Stateful) or bool(getattr(m, "is_stateful", False))


def reset(net: nn.Module) -> nn.Module:
    """Reset the state of every stateful module in ``net`` (neurons, spiking pools)."""
    for m in net.modules():
        if is_stateful_module(m):
            m.reset()
    return net
