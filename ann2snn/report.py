"""Evaluation reports: ANN accuracy, SNN accuracy per step, tables, JSON and plots."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .conversion import convert
from .network import device_of
from .simulation import simulate

__all__ = [
    "ann_accuracy",
    "evaluate_snn",
    "environment",
    "source_revision",
    "format_table",
    "plot_accuracy",
    "write_json",
    "write_report",
]


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
    **convert_options: Any,
) -> dict[str, Any]:
    """Convert ``model`` with ``neuron`` and simulate T wake steps; a JSON-able row."""
    snn = convert(model, neuron, calibration=calibration, **convert_options)
    res = simulate(
        snn, data, T, sleep=sleep, margin=margin, device=device, dtype=dtype, progress=progress
    )
    return {
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


def environment() -> dict[str, Any]:
    """Versions and hardware, for reproducible reports."""
    from . import __version__

    env = {
        "ann2snn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    env["git"] = source_revision()
    return env


def source_revision() -> dict[str, Any] | None:
    """Commit of the ann2snn source tree and its uncommitted library files, or None when
    the package is not a git checkout: results record which code produced them."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"GIT_OPTIONAL_LOCKS": "0"}  # read-only: no index refresh

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ann2snn")
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return {"commit": commit, "modified": [ln[3:] for ln in dirty.splitlines()]} if commit else None


def format_table(rows: Sequence[dict[str, Any]], steps: Sequence[int]) -> str:
    """Markdown table: one row per method; ANN accuracy and SNN accuracy at each T (%).

    A row with sleep steps also gets the total steps (wake + sleep) in its label, so
    latency is never quoted without the sleep steps.
    """
    head = ["method", "ANN"] + [f"T={t}" for t in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        label = r["label"]
        if r.get("total_steps_by_wake"):  # one run per T: T wake steps, then the sleep
            label += f" (T wake + {r['sleep']} sleep)"
        elif r.get("sleep"):
            label += f" (+{r['sleep']} sleep per {r.get('margin') or r['T']} wake)"
        cells = [label, _pct(r.get("ann_accuracy"))]
        acc = r["accuracy_by_wake"]
        cells += [_pct(acc.get(str(t))) for t in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def plot_accuracy(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy against wake steps (and against total steps for sleep schedules)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        steps = sorted(int(k) for k in r["accuracy_by_wake"])
        line = ax.plot(
            steps,
            [100 * r["accuracy_by_wake"][str(s)] for s in steps],
            marker="o",
            ms=3,
            label=r["label"],
        )
        if r.get("sleep"):
            ax.plot(
                r["total_steps"],
                [100 * a for a in r["accuracy"]],
                ls=":",
                color=line[0].get_color(),
                label=f"{r['label']} vs total steps",
            )
        if r.get("ann_accuracy") is not None:
            ax.axhline(100 * r["ann_accuracy"], ls="--", lw=0.8, color=line[0].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps (wake; dotted: wake + sleep)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike, steps: Sequence[int]
) -> dict[str, Path]:
    """``report.json`` and ``accuracy_vs_T.png`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    json_path = write_json(report, out_dir / "report.json")
    png = plot_accuracy(
        report["rows"], out_dir / "accuracy_vs_T.png", title=report.get("title", "")
    )
    return {"json": json_path, "plot": png}
