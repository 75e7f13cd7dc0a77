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
from torch import Tensor

from .._util import check_batch, finite_input, positive_int
from ..nn.network import SpikingNetwork, device_of, eval_mode
from ..nn.state import state_dtype
from .activity import ActivityMonitor, ActivityReport
from .schedule import Schedule, check_snn, default_max_fold, presim_steps, run_schedule

__all__ = ["SimulationResult", "simulate", "run", "activity"]


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
    for i, (x, y) in enumerate(data):
        yield check_batch(x, i, "simulate", finite=False), y


def _check_labels_shape(y: Tensor, x: Tensor, b: int) -> None:
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ValueError(
            f"simulate: batch {b}: labels must be class indices [B] (integers, one per image), "
            f"got {y.dtype} {tuple(y.shape)} for {x.shape[0]} images"
        )


def _refuse_bad_labels(bad_labels: list[tuple[int, Tensor]], classes: int) -> None:
    flags = [f for _, f in bad_labels]
    if flags and bool(torch.stack(flags).any()):
        b = bad_labels[int(torch.stack(flags).nonzero()[0])][0]
        raise ValueError(
            f"simulate: batch {b}: a label is outside 0..{classes - 1} (the network has "
            f"{classes} outputs); is this the dataset the network was trained on?"
        )


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
    check_snn(snn)
    schedule = Schedule(T, sleep, margin)
    finite_input(x, "run")
    device = device_of(snn)
    x = x.to(device)
    total = None
    with eval_mode(snn):
        snn.reset()
        for out in run_schedule(snn, x, schedule, max_fold or default_max_fold(device)):
            s = out.to(state_dtype(out.dtype)).sum(0)
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
        sleep: input-free steps of a sleep phase (CASC; 0: none).
        margin: a sleep phase after every ``margin`` wake steps (default: once, after all T).
        device: where to run (default: where ``snn`` is).
        max_fold: most samples per forward (steps × batch); default `default_max_fold`.
        dtype: run layers in this dtype (e.g. torch.bfloat16) under autocast; membranes stay fp32.
        activity: also count spikes, SynOps and MACs after every step (an
            `ActivityReport` in ``result.activity``; hooks, off by default).
        activity_batches: count only the first N batches (their images are the report's
            ``images``); counting touches every neuron output once more, so a few batches
            estimate the per-image cost at a fraction of the time. Default: all.
    """
    check_snn(snn)
    schedule = Schedule(T, sleep, margin)
    if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}"
        )
    if activity_batches is not None:
        positive_int("activity_batches", activity_batches)
    if activity and presim_steps(snn) > T:
        raise ValueError(
            f"simulate: activity counting of a COS network needs rho <= T (its layers run "
            f"rho = {presim_steps(snn)} steps to feed the pre-simulation), got T={T}"
        )
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
    bad_labels: list[tuple[int, Tensor]] = []  # per batch: a label outside the outputs
    with contextlib.ExitStack() as stack:  # the monitor's hooks go, whatever happens
        stack.enter_context(eval_mode(snn))  # and the caller's modes come back
        for b, (x, y) in enumerate(_batches(data)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            _check_labels_shape(y, x, b)
            # Checked once at the end (no device sync per batch): a NaN/inf input or output
            # must never become a prediction, a label outside the outputs never be scored.
            bad_inputs.append(~torch.isfinite(x).all())
            if activity and monitor is None:
                monitor = stack.enter_context(ActivityMonitor(snn, x))
            snn.reset()
            acc_out, i = None, 0
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for out in run_schedule(snn, x, schedule, max_fold):
                    # [n, B, C] → running sums after each of the n steps.
                    cum = out.to(state_dtype(out.dtype)).cumsum(0)
                    bad_outputs.append((b, ~torch.isfinite(cum).all()))
                    if i == 0:
                        classes = out.shape[-1]
                        bad_labels.append((b, ((y < 0) | (y >= classes)).any()))
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
    _refuse_bad_labels(bad_labels, classes)
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
    res = simulate(
        snn, data, T, sleep=sleep, margin=margin, device=device, progress=progress, activity=True
    )
    return res.activity


def _progress(enabled: bool, total: int, desc: str):
    from .._progress import ProgressBar

    return ProgressBar(total=total, desc=desc, enabled=enabled)
