"""Detector evaluation: mAP of an ANN, and of its SNN after every wake step from one run.

mAP comes from torchmetrics' ``MeanAveragePrecision`` (COCO protocol, pycocotools
backend): ``map50`` is mAP at IoU 0.5 (PASCAL VOC's metric, 101-point interpolation as
in COCO), ``map`` the COCO mAP averaged over IoU 0.5:0.95. Both are fractions in [0, 1].

The SNN's readout is a regression readout: the head's outputs summed over the steps so
far and divided by the wake steps so far (after a CASC sleep phase, by the wake steps
that preceded it), then decoded like the ANN's output (`ann2snn.detection.head.decode`). One
simulation of T wake steps yields the mAP at every t ≤ T.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.network import SpikingNetwork, device_of, eval_mode
from ..simulation import Schedule, default_max_fold, run_schedule
from .head import YoloSpec, decode, detector_spec, targets_to_list, yolo_loss

__all__ = [
    "MapScorer",
    "evaluate_detector",
    "simulate_detection",
    "DetectionResult",
    "ann_map",
    "evaluate_detection_snn",
]


class MapScorer:
    """Accumulates detections and targets; `compute` gives ``{"map50", "map"}``."""

    def __init__(self) -> None:
        try:
            from torchmetrics.detection import MeanAveragePrecision
        except ImportError as e:  # an optional dependency: say how to get it
            raise ImportError(
                "detection mAP needs torchmetrics and pycocotools: pip install 'ann2snn[detection]'"
            ) from e
        self.metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
        self.images = 0

    def update(self, out: Tensor, y: Tensor, spec: YoloSpec) -> None:
        """Decode head outputs ``[B, A·(5+C), S, S]`` and score them against ``y`` ``[B, N, 5]``."""
        preds = [{k: v.cpu() for k, v in d.items()} for d in decode(out, spec)]
        self.metric.update(preds, [{k: v.cpu() for k, v in d.items()} for d in targets_to_list(y)])
        self.images += y.shape[0]

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {"map50": math.nan, "map": math.nan}
        r = self.metric.compute()
        # pycocotools reports −1 when no ground truth exists at all.
        return {k: max(float(r[m]), 0.0) for k, m in (("map50", "map_50"), ("map", "map"))}


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    spec: YoloSpec,
    device: str | torch.device | None = None,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[float, float, float]:
    """(mAP@0.5 %, COCO mAP %, mean loss per image) of ``model`` in eval mode over
    ``loader``; the model's mode is restored afterwards. NaNs for an empty loader."""
    device = torch.device(device) if device is not None else device_of(model)
    scorer, loss_sum, seen = MapScorer(), 0.0, 0
    with eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x)
            loss_sum += float(yolo_loss(out, y, spec)) * y.shape[0]
            seen += y.shape[0]
            scorer.update(out, y, spec)
    if seen == 0:
        return math.nan, math.nan, math.nan
    m = scorer.compute()
    return 100 * m["map50"], 100 * m["map"], loss_sum / seen


def ann_map(model: nn.Module, data: Iterable, spec: YoloSpec) -> dict[str, float]:
    """``{"map50", "map"}`` (fractions) of the ANN on ``data``."""
    map50, map_, _ = evaluate_detector(model, data, spec)
    return {"map50": map50 / 100, "map": map_ / 100}


@dataclass
class DetectionResult:
    """mAP after each reported wake step of one simulation."""

    map50_by_wake: dict[int, float]
    map_by_wake: dict[int, float]
    total_steps_by_wake: dict[int, int]  # wake + sleep steps behind each figure
    images: int
    wall_time: float
    schedule: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("map50_by_wake", "map_by_wake", "total_steps_by_wake"):
            d[k] = {str(t): v for t, v in d[k].items()}
        return d


@torch.no_grad()
def simulate_detection(
    snn: SpikingNetwork,
    data: Iterable | tuple[Tensor, Tensor],
    T: int,
    spec: YoloSpec,
    sleep: int = 0,
    margin: int | None = None,
    steps: Sequence[int] | None = None,
    max_fold: int | None = None,
) -> DetectionResult:
    """mAP of the SNN's regression readout after each of ``steps`` wake steps (default
    1..T) from one run of T wake steps (and the sleep phases of ``sleep``/``margin``).

    After a sleep phase the readout counts the phase: a figure for t wake steps is taken
    after the last step with t wake steps done."""
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"expected a SpikingNetwork from ann2snn.convert, got {type(snn).__name__}")
    schedule = Schedule(T, sleep, margin)
    wake_idx, total_idx = schedule.step_index()
    steps = sorted(set(steps or range(1, T + 1)))
    if bad := [t for t in steps if not 1 <= t <= T]:
        raise ValueError(f"steps must lie in 1..T={T}, got {bad}")
    # The record index (0-based step) whose readout stands for t wake steps.
    at = {t: max(i for i, w in enumerate(wake_idx) if w == t) for t in steps}
    by_index = {i: t for t, i in at.items()}
    scorers = {t: MapScorer() for t in steps}
    device = device_of(snn)
    max_fold = max_fold or default_max_fold(device)
    images, start = 0, time.perf_counter()
    data = [data] if isinstance(data, tuple) else data
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(snn))
        for x, y in data:
            x, y = x.to(device), y.to(device)
            snn.reset()
            total, i = None, 0
            for out in run_schedule(snn, x, schedule, max_fold):  # [n, B, A·(5+C), S, S]
                for step_out in out.float():
                    total = step_out if total is None else total + step_out
                    if i in by_index:
                        t = by_index[i]
                        readout = total / wake_idx[i]  # mean over the wake steps so far
                        if not torch.isfinite(readout).all():
                            raise ValueError(
                                "simulate_detection: the SNN's output holds NaN/inf values"
                            )
                        scorers[t].update(readout, y, spec)
                    i += 1
            images += y.shape[0]
        snn.reset()
    wall = time.perf_counter() - start
    if images == 0:
        raise ValueError("simulate_detection: data yielded no batches")
    maps = {t: s.compute() for t, s in scorers.items()}
    return DetectionResult(
        map50_by_wake={t: m["map50"] for t, m in maps.items()},
        map_by_wake={t: m["map"] for t, m in maps.items()},
        total_steps_by_wake={t: total_idx[at[t]] for t in steps},
        images=images,
        wall_time=wall,
        schedule=asdict(schedule),
    )


def evaluate_detection_snn(
    model: nn.Module,
    data: Iterable,
    neuron: str = "if",
    steps: Sequence[int] = (1, 2, 4, 8, 16),
    sleep: int = 0,
    margin: int | None = None,
    label: str | None = None,
    **convert_options: Any,
) -> dict[str, Any]:
    """Convert the detector ``model`` with ``neuron`` and report the SNN's mAP at each of
    ``steps``; a JSON-able row (``map50_by_wake``, ``map_by_wake``, ``total_steps_by_wake``).

    Without sleep (or with a ``margin``) one run of max(steps) wake steps gives every T.
    With a sleep phase after all wake steps (CASC), each T is its own run — T wake steps,
    then ``sleep`` input-free steps — as the sleep phase follows the last wake step."""
    from ..conversion.converter import convert

    spec = detector_spec(model)
    snn = convert(model, neuron, **convert_options)
    steps = sorted(set(steps))
    if sleep and margin is None and len(steps) > 1:
        results = [simulate_detection(snn, data, t, spec, sleep=sleep, steps=[t]) for t in steps]
    else:
        results = [simulate_detection(snn, data, max(steps), spec, sleep, margin, steps)]
    row: dict[str, Any] = {
        "label": label or neuron,
        "neuron": neuron,
        "convert": snn.config,
        "T": max(steps),
        "sleep": sleep,
        "margin": margin,
        "map50_by_wake": {},
        "map_by_wake": {},
        "total_steps_by_wake": {},
        "images": results[0].images,
        "wall_time": sum(r.wall_time for r in results),
    }
    for r in results:
        for key in ("map50_by_wake", "map_by_wake", "total_steps_by_wake"):
            row[key].update({str(t): v for t, v in getattr(r, key).items()})
    return row
