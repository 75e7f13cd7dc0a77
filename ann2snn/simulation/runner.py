"""Simulation of converted networks: accuracy after every step from one run.

Input is encoded directly (the image is fed unchanged at every wake step). The last
layer's outputs are accumulated; the prediction after step t is the argmax of the
running sum, so one run of T steps gives the accuracy for every t ≤ T (the network is
causal). A `Schedule` says which steps receive input ("wake") and which are input-free
with biases off ("sleep", CASC's wake-sleep conversion); plain IF simulation is the
schedule with no sleep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._util import finite_input, positive_int
from ..nn.network import SpikingNetwork, device_of, eval_mode
from .activity import ActivityMonitor, ActivityReport

__all__ = ["Schedule", "Phase", "SimulationResult", "LayerDiff", "simulate", "run", "compare",
           "activity", "run_schedule", "default_max_fold"]  # fmt: skip


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


@dataclass
class SimulationResult:
    """Accuracy after every step of one simulation, with its cost."""

    accuracy: list[float]  # after each step (wake and sleep), fraction in [0, 1]
    wake_steps: list[int]  # wake steps done at each record
    total_steps: list[int]  # wake + sleep steps done at each record
    images: int
    wall_time: float
    image_steps_per_s: float
    schedule: dict[str, Any] = field(default_factory=dict)
    activity: ActivityReport | None = None  # with simulate(..., activity=True)

    def accuracy_at(self, wake: int) -> float:
        """Accuracy after ``wake`` wake steps and the sleep phase that follows them, if any."""
        idx = [i for i, w in enumerate(self.wake_steps) if w == wake]
        if not idx:
            raise ValueError(f"no record at {wake} wake steps (ran {max(self.wake_steps)})")
        return self.accuracy[idx[-1]]

    def by_wake_steps(self) -> dict[int, float]:
        """{t: accuracy after t wake steps (and any sleep after them)}."""
        return {w: self.accuracy_at(w) for w in sorted(set(self.wake_steps))}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["activity"] = self.activity.to_dict() if self.activity is not None else None
        return d


def _batches(data: Any) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], Tensor):
        yield data[0], data[1]
        return
    yield from data


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


def run_schedule(
    snn: SpikingNetwork, x: Tensor, schedule: Schedule, max_fold: int
) -> Iterator[Tensor]:
    """Yield the network's per-step outputs ``[n, B, out...]`` chunk by chunk."""
    chunk = _chunk_steps(x.shape[0], max_fold)
    for phase in schedule.phases():
        for start in range(0, phase.steps, chunk):
            n = min(chunk, phase.steps - start)
            if phase.kind == "wake":
                yield snn(x.unsqueeze(0).expand(n, *x.shape))
            else:
                with snn.sleeping():
                    yield snn(torch.zeros((n, *x.shape), dtype=x.dtype, device=x.device))


def _refuse_non_finite(bad_inputs: list[Tensor], bad_outputs: list[tuple[int, Tensor]]) -> None:
    """Raise for the first batch whose input, or else output, held NaN/inf (one sync)."""
    if bad_inputs and bool(torch.stack(bad_inputs).any()):
        b = int(torch.stack(bad_inputs).nonzero()[0])
        raise ValueError(
            f"simulate: batch {b}: the input holds NaN/inf values; clean or drop those images "
            "first (a spiking network would turn them into a finite prediction)"
        )
    flags = [f for _, f in bad_outputs]
    if flags and bool(torch.stack(flags).any()):
        b = bad_outputs[int(torch.stack(flags).nonzero()[0])][0]
        raise ValueError(
            f"simulate: batch {b}: the network's output holds NaN/inf values although the "
            "input is finite; check the model's weights and thresholds"
        )


def _check_snn(snn: Any) -> None:
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            f"expected a SpikingNetwork from ann2snn.convert(model), got {type(snn).__name__}"
        )


@torch.no_grad()
def run(
    snn: SpikingNetwork,
    x: Tensor,
    T: int,
    sleep: int = 0,
    margin: int | None = None,
    max_fold: int | None = None,
) -> Tensor:
    """Time-averaged output for one batch ``x`` ``[B, ...]`` after T wake steps.

    State is reset first. With a sleep schedule the output accumulated over wake *and*
    sleep steps is divided by the T wake steps, so it is comparable with the ANN.
    """
    _check_snn(snn)
    schedule = Schedule(T, sleep, margin)
    finite_input(x, "run")
    device = device_of(snn)
    x = x.to(device)
    total = None
    with eval_mode(snn):
        snn.reset()
        for out in run_schedule(snn, x, schedule, max_fold or default_max_fold(device)):
            s = out.float().sum(0)
            total = s if total is None else total + s
        snn.reset()
    return total / T


@torch.no_grad()
def simulate(
    snn: SpikingNetwork,
    data: Iterable | tuple[Tensor, Tensor],
    T: int,
    sleep: int = 0,
    margin: int | None = None,
    device: str | torch.device | None = None,
    max_fold: int | None = None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    activity: bool = False,
    activity_batches: int | None = None,
) -> SimulationResult:
    """Accuracy after each step t = 1..T (plus sleep steps) from one run of the schedule.

    Args:
        snn: a `SpikingNetwork` from `ann2snn.convert`.
        data: a DataLoader of (x, y), or one ``(x, y)`` pair of tensors.
        T: wake steps (steps with input).
        sleep, margin: a sleep phase of ``sleep`` input-free steps after every ``margin``
            wake steps (default: once, after all T).
        device: where to run (default: where ``snn`` is).
        max_fold: most samples per forward (steps × batch); default `default_max_fold`.
        dtype: run layers in this dtype (e.g. torch.bfloat16) under autocast; membranes stay fp32.
        activity: also count spikes, SynOps and MACs after every step (an
            `ActivityReport` in ``result.activity``; hooks, off by default).
        activity_batches: count only the first N batches (their images are the report's
            ``images``); counting touches every neuron output once more, so a few batches
            estimate the per-image cost at a fraction of the time. Default: all.
    """
    _check_snn(snn)
    schedule = Schedule(T, sleep, margin)
    if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")  # fmt: skip
    if activity_batches is not None:
        positive_int("activity_batches", activity_batches)
    device = torch.device(device) if device is not None else device_of(snn)
    snn = snn.to(device)
    max_fold = max_fold or default_max_fold(device)
    wake_idx, total_idx = schedule.step_index()
    correct = torch.zeros(len(total_idx), dtype=torch.long, device=device)
    images = 0
    total_batches = len(data) if hasattr(data, "__len__") and not isinstance(data, tuple) else 1
    bar = _progress(
        progress, total_batches, f"simulate T={T}" + (f" sleep={sleep}" if sleep else "")
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    monitor = None
    bad_inputs: list[Tensor] = []  # per batch: the input holds NaN/inf
    bad_outputs: list[tuple[int, Tensor]] = []  # per chunk: the output does
    with contextlib.ExitStack() as stack:  # the monitor's hooks go, whatever happens
        stack.enter_context(eval_mode(snn))  # and the caller's modes come back
        for b, (x, y) in enumerate(_batches(data)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # Checked once at the end (no device sync per batch): a NaN/inf input or output
            # must never become a prediction.
            bad_inputs.append(~torch.isfinite(x).all())
            if activity and monitor is None:
                monitor = stack.enter_context(ActivityMonitor(snn, x))
            snn.reset()
            acc_out, i = None, 0
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for out in run_schedule(snn, x, schedule, max_fold):
                    # [n, B, C] → running sums after each of the n steps.
                    cum = out.float().cumsum(0)
                    bad_outputs.append((b, ~torch.isfinite(cum).all()))
                    if acc_out is not None:
                        cum = cum + acc_out
                    correct[i : i + out.shape[0]] += (cum.argmax(-1) == y).sum(1)
                    acc_out, i = cum[-1], i + out.shape[0]
            images += y.shape[0]
            if monitor is not None and monitor.counting:
                monitor.end_batch(y.shape[0])
                if activity_batches is not None and b + 1 >= activity_batches:
                    monitor.__exit__(None, None, None)  # the rest runs hook-free
            bar.update(1)
    snn.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    bar.close()
    if images == 0:
        raise ValueError("simulate: data yielded no batches; pass a non-empty loader or (x, y)")
    _refuse_non_finite(bad_inputs, bad_outputs)
    accuracy = (correct.double() / max(images, 1)).tolist()
    return SimulationResult(
        accuracy=accuracy,
        wake_steps=wake_idx,
        total_steps=total_idx,
        images=images,
        wall_time=wall,
        image_steps_per_s=images * len(total_idx) / wall if wall > 0 else float("inf"),
        schedule=asdict(schedule),
        activity=monitor.report(wake_idx, total_idx) if monitor is not None else None,
    )


def activity(
    snn: SpikingNetwork,
    data: Iterable | tuple[Tensor, Tensor] | Tensor,
    T: int,
    sleep: int = 0,
    margin: int | None = None,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> ActivityReport:
    """Firing rates, SynOps, MACs and energy after every step of one T-step run
    (`ann2snn.simulation.activity`). ``data``: a DataLoader of (x, y), an (x, y) pair or a tensor of
    inputs; at most ``max_batches`` batches. The same run's accuracy comes with
    ``simulate(snn, data, T, activity=True)``."""
    if isinstance(data, Tensor):
        data = (data, torch.zeros(data.shape[0], dtype=torch.long))
    if max_batches is not None and not isinstance(data, tuple):
        data = [b for _, b in zip(range(max_batches), data)]
    res = simulate(snn, data, T, sleep=sleep, margin=margin, device=device, progress=progress,
                   activity=True)  # fmt: skip
    return res.activity


def _progress(enabled: bool, total: int, desc: str):
    from .._progress import ProgressBar

    return ProgressBar(total=total, desc=desc, enabled=enabled)


@dataclass
class LayerDiff:
    """How far one layer's SNN rate is from its ANN activation."""

    name: str
    mean_abs: float
    max_abs: float

    def __str__(self) -> str:
        return f"{self.name:<28} mean |Δ| {self.mean_abs:.4g}   max |Δ| {self.max_abs:.4g}"


@torch.no_grad()
def compare(
    ann: nn.Module,
    snn: SpikingNetwork,
    x: Tensor,
    T: int,
    sleep: int = 0,
    margin: int | None = None,
) -> list[LayerDiff]:
    """Per converted layer (execution order) and for the output: mean and max of
    |SNN mean output over T wake steps − ANN activation|, on one batch ``x``.

    The ANN activations come from ``ann`` evaluated through the converted graph in ANN
    mode (identical to ``ann(x)``; checked on the output).
    """
    _check_snn(snn)
    finite_input(x, "compare")
    with eval_mode(ann, snn):
        return _compare(ann, snn, x, Schedule(T, sleep, margin))


def _compare(ann: nn.Module, snn: SpikingNetwork, x: Tensor, schedule: Schedule) -> list[LayerDiff]:
    T = schedule.wake
    device = device_of(snn)
    x = x.to(device)
    layers = list(snn.spiking_layers())
    ann_acts: dict[str, Tensor] = {}
    handles = [
        n.register_forward_hook(lambda m, i, o, name=name: ann_acts.__setitem__(name, o.float()))
        for name, n in layers
    ]
    try:
        ann_out = snn.ann_forward(x).float()
    finally:
        for h in handles:
            h.remove()
    ref = ann.to(device)(x).float()
    if not torch.allclose(ref, ann_out, rtol=1e-4, atol=1e-4 * (1 + ref.abs().max().item())):
        raise ValueError("ann and snn disagree in ANN mode: was snn converted from this ann?")
    for _, n in layers:
        n.record = True
    snn.reset()
    try:
        # One run of the schedule: accumulate the output, and each neuron its emitted sum.
        total = sum(
            out.float().sum(0) for out in run_schedule(snn, x, schedule, default_max_fold(device))
        )
        snn_out = total / T
        rates = {name: n.recorded.float() / T for name, n in layers}
    finally:
        for _, n in layers:
            n.record = False
        snn.reset()
    diffs = [LayerDiff(name, *_abs_stats(rates[name] - ann_acts[name])) for name, _ in layers]
    diffs.append(LayerDiff("output", *_abs_stats(snn_out - ann_out)))
    return diffs


def _abs_stats(d: Tensor) -> tuple[float, float]:
    a = d.abs()
    return float(a.mean()), float(a.max())
