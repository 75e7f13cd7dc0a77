"""Argument checks shared by every public boundary (Python API and CLI).

Each check returns the value (normalised) or raises ``ValueError`` with one message that
names the argument, what was given and what is allowed, e.g. ``T must be an integer >= 1,
got 2.5``. The CLI turns these into one line on stderr and exit code 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "check_batch",
    "positive_int",
    "finite_number",
    "percentile_value",
    "one_of",
    "resolve_device",
    "finite_input",
]


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools, floats and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def finite_number(
    name: str, value: Any, low: float | None = None, high: float | None = None
) -> float:
    """``value`` as a finite float in [low, high] (either bound optional)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None and value < low:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        bounds = ""
        if low is not None and high is not None:
            bounds = f" in [{low}, {high}]"
        elif low is not None:
            bounds = f" >= {low}"
        elif high is not None:
            bounds = f" <= {high}"
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
    return float(value)


def percentile_value(name: str, value: Any) -> float:
    """``value`` as a percentile in (0, 100]."""
    try:
        ok = 0 < value <= 100
    except TypeError:
        ok = False
    if not ok or isinstance(value, bool):
        raise ValueError(f"{name} must be in (0, 100], got {value!r}")
    return float(value)


def one_of(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def resolve_device(name: str, value: str | torch.device | None) -> torch.device:
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:N' or a torch.device;
    refuses a CUDA device this machine does not have."""
    if value is None or value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name} is {value!r}, but CUDA is not available on this machine; use 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name} is {value!r}, but this machine has {torch.cuda.device_count()} CUDA "
                "device(s)"
            )
    return device


def finite_input(x: torch.Tensor, where: str) -> None:
    """Refuse inputs holding NaN or ±inf: a spiking network turns them into finite spike
    counts, i.e. a silent, meaningless prediction."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{where}: the input must be one tensor [B, ...] (a converted network takes one "
            f"input), got {type(x).__name__}"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{where}: the input holds {bad} NaN/inf value(s) of {x.numel()}; clean or drop "
            "those images first (a spiking network would turn them into a finite prediction)"
        )


def check_batch(x: Any, i: int, where: str = "calibration data", finite: bool = True) -> Any:
    """One batch of inputs at a public door (calibration, simulation): a non-empty tensor,
    of finite values when ``finite`` (a NaN would make every percentile, gap and prediction
    meaningless, silently; `simulate` checks finiteness later, without a sync per batch)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{where}: batch {i} is a {type(x).__name__}, not a tensor (a converted network "
            "takes one input tensor)"
        )
    if x.numel() == 0:
        raise ValueError(f"{where}: batch {i} is empty (shape {tuple(x.shape)})")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{where}: batch {i} holds {bad} NaN/inf value(s) of {x.numel()}; clean "
            "or drop those images first"
        )
    return x
