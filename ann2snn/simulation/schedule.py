"""When a network gets input: the wake/sleep `Schedule` and the loop that runs it.

A `Schedule` says which steps receive input ("wake") and which are input-free with biases
off ("sleep", CASC's wake-sleep conversion); plain IF simulation is the schedule with no
sleep. `run_schedule` feeds one batch through it, folding as many steps into one forward
of the stateless layers as `default_max_fold` allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._util import positive_int
from ..nn.network import SpikingNetwork

__all__ = ["Phase", "Schedule", "run_schedule", "default_max_fold", "check_snn"]


@dataclass(frozen=True)
class Phase:
    """A run of ``steps`` steps that are either "wake" (input, biases) or "sleep" (neither)."""

    kind: str
    steps: int


@dataclass(frozen=True)
class Schedule:
    """T wake steps; after every ``margin`` wake steps a sleep phase of ``sleep`` steps.

    ``Schedule(8)`` is plain simulation; ``Schedule(8, sleep=56)`` is CASC's default (one
    sleep phase of 56 steps after the 8 wake steps).
    """

    wake: int
    sleep: int = 0
    margin: int | None = None

    def __post_init__(self) -> None:
        positive_int("T (wake steps)", self.wake)
        positive_int("sleep", self.sleep, minimum=0)
        if self.margin is not None:
            positive_int("margin", self.margin)

    def phases(self) -> list[Phase]:
        """The phases in order, e.g. [wake 4, sleep 8, wake 4, sleep 8]."""
        if self.sleep == 0:
            return [Phase("wake", self.wake)]
        margin = self.margin or self.wake
        out: list[Phase] = []
        done = 0
        while done < self.wake:
            n = min(margin, self.wake - done)
            out += [Phase("wake", n), Phase("sleep", self.sleep)]
            done += n
        return out

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases())

    def step_index(self) -> tuple[list[int], list[int]]:
        """(wake steps so far, total steps so far) after each step of the schedule."""
        wake, total, w = [], [], 0
        for p in self.phases():
            for _ in range(p.steps):
                w += p.kind == "wake"
                wake.append(w)
                total.append(len(total) + 1)
        return wake, total


def default_max_fold(device: torch.device) -> int:
    """Most samples (steps × batch) per forward of the stateless layers.

    On a GPU a big fold fills the device (16384). On a CPU it does not pay: the folded
    activations spill the caches, and one step at a time ran 1.6–1.7× faster (cnn and
    resnet20, batch 128, T = 16: 128 against 2048, `benchmarks/speed.py --max-fold`).
    """
    return 16384 if device.type == "cuda" else 128


def _chunk_steps(batch: int, max_fold: int) -> int:
    # Stateless layers process [steps·B, ...] at once; cap the fold to bound memory.
    return max(1, max_fold // max(batch, 1))


def presim_steps(snn: SpikingNetwork) -> int:
    """ρ of a COS-calibrated network (`ann2snn.calibrate(..., method="cos")`), else 0: the
    most steps any of its neurons pre-simulates (the neurons hold it; the config records it)."""
    return max((int(getattr(m, "presim", 0)) for m in snn.modules()), default=0)


def run_schedule(
    snn: SpikingNetwork, x: Tensor, schedule: Schedule, max_fold: int
) -> Iterator[Tensor]:
    """Yield the network's per-step outputs ``[n, B, out...]`` chunk by chunk."""
    chunk = _chunk_steps(x.shape[0], max_fold)
    # COS layers pre-simulate on the first ρ inputs they receive: the first call brings ρ
    # steps at least, and when ρ > T the steps past T run only to feed the next layers'
    # pre-simulation (their outputs are not yielded; the latency is counted as T + L·ρ).
    rho = presim_steps(snn)
    chunk = max(chunk, rho)
    first = True
    for phase in schedule.phases():
        for start in range(0, phase.steps, chunk):
            n = min(chunk, phase.steps - start)
            if phase.kind == "wake":
                steps = max(n, rho) if first else n
                first = False
                yield snn(x.unsqueeze(0).expand(steps, *x.shape))[:n]
            else:
                with snn.sleeping():
                    yield snn(torch.zeros((n, *x.shape), dtype=x.dtype, device=x.device))


def check_snn(snn: Any) -> None:
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            f"expected a SpikingNetwork from ann2snn.convert(model), got {type(snn).__name__}"
        )
