"""Evaluating a model as an ANN and as an SNN: the rows every report, the demo, the CLI and
the benchmarks are made of.

A row is a JSON-able dict: the SNN's accuracy after every wake step (fractions in [0, 1];
percent only when printed), its steps (wake and total, sleep included), wall time, and
with ``activity=True`` what its spikes cost (`cost_columns`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .calibration import CalibrationLog, calibrate
from .conversion import convert
from .nn.network import device_of
from .simulation import ActivityReport, simulate
from .simulation.activity import E_AC, E_MAC

__all__ = ["ann_accuracy", "evaluate_snn", "evaluate_wake_sleep", "cost_columns", "report_steps"]


@torch.no_grad()
def ann_accuracy(
    model: nn.Module, data: Iterable, device: str | torch.device | None = None
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``data``, a loader of (x, y)."""
    device = torch.device(device) if device else device_of(model)
    was_training = model.training
    model = model.to(device).eval()
    correct = total = 0
    for x, y in data:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(-1) == y).sum())
        total += y.shape[0]
    model.train(was_training)
    return correct / max(total, 1)


def evaluate_snn(
    model: nn.Module,
    data: Iterable,
    neuron: str = "if",
    T: int = 16,
    sleep: int = 0,
    margin: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    label: str | None = None,
    calibration: Any = None,
    activity: bool = False,
    activity_batches: int | None = None,
    post_calibration: dict[str, Any] | None = None,
    **convert_options: Any,
) -> dict[str, Any]:
    """Convert ``model`` with ``neuron`` and simulate T wake steps; a JSON-able row.

    With ``activity=True`` the row also holds what the spikes cost (`cost_columns`).
    ``post_calibration``: keywords of `ann2snn.calibrate` (``data``, ``method``,
    ``batches``, optional ``T``, default this run's T) applied after conversion; the
    row then holds the calibration's log under ``"calibration"``."""
    snn = convert(model, neuron, calibration=calibration, **convert_options)
    cal_log = None
    if post_calibration:
        cal_log = CalibrationLog(post_calibration["method"], T)
        # The schedule it will run on: T, sleep and margin (a post_calibration "T" wins).
        opts = {"T": T, "sleep": sleep, "margin": margin, **post_calibration}
        snn = calibrate(snn, log=cal_log, **opts)
    res = simulate(
        snn,
        data,
        T,
        sleep=sleep,
        margin=margin,
        device=device,
        dtype=dtype,
        progress=progress,
        activity=activity,
        activity_batches=activity_batches,
    )
    row = {
        "label": label or neuron,
        "neuron": neuron,
        "convert": snn.config,
        "T": T,
        "sleep": sleep,
        "margin": margin,
        "accuracy_by_wake": {str(k): v for k, v in res.by_wake_steps().items()},
        "accuracy": res.accuracy,
        "wake_steps": res.wake_steps,
        "total_steps": res.total_steps,
        "images": res.images,
        "wall_time": res.wall_time,
        "image_steps_per_s": res.image_steps_per_s,
    }
    if res.activity is not None:
        row.update(cost_columns(res.activity))
    if cal_log is not None:
        row["calibration"] = cal_log.as_dict()
    presim = (snn.config.get("calibration") or {}).get("presim_steps", 0)
    if presim:  # COS: each layer pre-simulates first; the output comes that much later
        row["presim_steps"] = presim
        row["total_steps"] = [n + presim for n in row["total_steps"]]
    return row


def cost_columns(rep: ActivityReport, wake: int | None = None) -> dict[str, Any]:
    """Row fields of an `ActivityReport`: SynOps, SNN MACs, energy ratio and firing rate
    by wake steps (only ``wake`` if given: one wake-sleep run per T), the ANN's MACs, and
    each layer's firing rate after the last step."""
    by_wake = rep.by_wake_steps()
    keys = [str(wake)] if wake is not None else list(by_wake)
    last = len(rep.wake_steps) - 1
    return {
        "ann_macs": rep.ann_macs,
        "synops_by_wake": {k: by_wake[k]["synops"] for k in keys},
        "snn_macs_by_wake": {k: by_wake[k]["snn_macs"] for k in keys},
        "energy_ratio_by_wake": {k: by_wake[k]["energy_ratio"] for k in keys},
        "firing_rate_by_wake": {k: by_wake[k]["firing_rate"] for k in keys},
        "layer_firing_rates": {layer.name: layer.firing_rate()[last] for layer in rep.layers},
        "activity_images": rep.images,
        "energy_model": {"e_mac": E_MAC, "e_ac": E_AC},
    }


def report_steps(T: int) -> list[int]:
    """1, 2, 4, … up to T (and T itself)."""
    out, t = [], 1
    while t < T:
        out.append(t)
        t *= 2
    return out + [T]


def evaluate_wake_sleep(
    model: Any,
    data: Any,
    steps: list[int],
    sleep: int,
    progress: bool = True,
    label: str = "CASC",
    neuron: str = "cif",
    **convert_options: Any,
) -> dict[str, Any]:
    """One run per T (T wake steps, then ``sleep`` input-free steps): CASC's wake-sleep,
    and networks calibrated for each T; ``convert_options`` go to `evaluate_snn` (e.g.
    ``compiled=True``, ``post_calibration``)."""
    row: dict[str, Any] = {
        "label": label,
        "neuron": neuron,
        "sleep": sleep,
        "accuracy_by_wake": {},
        "total_steps_by_wake": {},
        "wall_time": 0.0,
    }
    for t in steps:
        r = evaluate_snn(
            model, data, neuron, T=t, sleep=sleep, progress=progress, **convert_options
        )
        row["accuracy_by_wake"][str(t)] = r["accuracy_by_wake"][str(t)]
        row["total_steps_by_wake"][str(t)] = t + sleep + r.get("presim_steps", 0)
        # What the spikes cost (activity=True): this run's figures at its own T.
        for key in (
            "synops_by_wake",
            "snn_macs_by_wake",
            "energy_ratio_by_wake",
            "firing_rate_by_wake",
        ):
            if key in r:
                row.setdefault(key, {})[str(t)] = r[key][str(t)]
        for key in (
            "ann_macs",
            "layer_firing_rates",
            "energy_model",
            "activity_images",
            "presim_steps",
        ):
            if key in r:
                row[key] = r[key]
        row["wall_time"] += r["wall_time"]
        row["convert"] = r["convert"]
        if "calibration" in r:  # post-conversion calibration, one per T
            row.setdefault("calibration_by_wake", {})[str(t)] = r["calibration"]
    # For plots: accuracy against total steps of each separate run.
    row["total_steps"] = [row["total_steps_by_wake"][str(t)] for t in steps]
    row["accuracy"] = [row["accuracy_by_wake"][str(t)] for t in steps]
    row["T"] = max(steps)
    row["margin"] = None
    return row
