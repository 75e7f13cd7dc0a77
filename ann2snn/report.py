"""Evaluation reports: ANN accuracy, SNN accuracy per step, tables, JSON and plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._io import environment, save_figure, source_revision, write_json
from .simulation.activity import E_AC, E_MAC

__all__ = [
    "environment",
    "source_revision",
    "format_table",
    "format_cost_table",
    "plot_cost",
    "plot_accuracy",
    "write_json",
    "write_report",
]


def format_table(
    rows: Sequence[dict[str, Any]], steps: Sequence[int], metric: str = "accuracy"
) -> str:
    """Markdown table: one row per method; ANN accuracy and SNN accuracy at each T (%);
    ``metric="map50"`` (or "map") for a detector's rows (``map50_by_wake``, ``ann_map50``).

    A row with sleep steps also gets the total steps (wake + sleep) in its label, so
    latency is never quoted without the sleep steps.
    """
    head = ["method", "ANN"] + [f"T={t}" for t in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        label = r["label"]
        if r.get("total_steps_by_wake") and r.get("sleep"):  # one run per T, then the sleep
            label += f" (T wake + {r['sleep']} sleep)"
        elif r.get("sleep"):
            label += f" (+{r['sleep']} sleep per {r.get('margin') or r['T']} wake)"
        cells = [label, _pct(r.get(f"ann_{metric}"))]
        acc = r[f"{metric}_by_wake"]
        cells += [_pct(acc.get(str(t))) for t in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_cost_table(rows: Sequence[dict[str, Any]], steps: Sequence[int]) -> str:
    """Markdown table of what the spikes cost: SNN energy ÷ ANN energy at each T, and
    SynOps per image (rows evaluated with ``activity=True``)."""
    head = ["method", "ANN MACs"] + [f"T={t}" for t in steps]
    counted = {r.get("activity_images") for r in rows if "energy_ratio_by_wake" in r}
    on = f", on {counted.pop():,} test images" if len(counted) == 1 and None not in counted else ""
    lines = [
        f"SNN energy / ANN energy (SynOps per image{on}), "
        f"{E_AC * 1e12:.1f} pJ per AC, {E_MAC * 1e12:.1f} pJ per MAC",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in rows:
        if "energy_ratio_by_wake" not in r:
            continue
        cells = [r["label"], f"{r['ann_macs']:.3g}"]
        for t in steps:
            ratio = r["energy_ratio_by_wake"].get(str(t))
            ops = r["synops_by_wake"].get(str(t))
            cells.append("—" if ratio is None else f"{ratio:.3f} ({ops:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_cost(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, title: str = ""
) -> dict[str, Path]:
    """``accuracy_vs_energy.png`` (accuracy against SNN/ANN energy, one point per T and
    method) and ``firing_rates.png`` (each layer's firing rate, one bar group per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "energy_ratio_by_wake" in r]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        ts = sorted(int(k) for k in r["energy_ratio_by_wake"] if k in r["accuracy_by_wake"])
        xs = [r["energy_ratio_by_wake"][str(t)] for t in ts]
        ys = [100 * r["accuracy_by_wake"][str(t)] for t in ts]
        line = ax.plot(xs, ys, marker="o", ms=3, label=r["label"])
        for t, x, y in zip(ts, xs, ys):
            if t & (t - 1) == 0:  # label T = 1, 2, 4, 8, …: every T would clutter the line
                ax.annotate(f"T={t}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        if r.get("ann_accuracy") is not None:
            ax.axhline(100 * r["ann_accuracy"], ls="--", lw=0.8, color=line[0].get_color())
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("SNN energy / ANN energy (45 nm: 0.9 pJ per AC, 4.6 pJ per MAC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = {"energy_plot": out_dir / "accuracy_vs_energy.png"}
    save_figure(fig, paths["energy_plot"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        rates = r["layer_firing_rates"]
        ax.bar(
            [j + i * width for j in range(len(rates))],
            list(rates.values()),
            width,
            label=r["label"],
        )
        if i == 0:
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rates))])
            ax.set_xticklabels(list(rates), rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("spike events per neuron per step")
    ax.set_title("firing rate per layer (after the last step)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["rates_plot"] = out_dir / "firing_rates.png"
    save_figure(fig, paths["rates_plot"])
    plt.close(fig)
    return paths


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


_YLABELS = {
    "accuracy": "test accuracy (%)",
    "map50": "test mAP@0.5 (%)",
    "map": "test mAP@[.5:.95] (%)",
}


def plot_accuracy(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    metric: str = "accuracy",
) -> Path:
    """Accuracy (or a detector's ``metric``, e.g. "map50") against wake steps, and against
    total steps for sleep schedules simulated in one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        by_wake = r[f"{metric}_by_wake"]
        steps = sorted(int(k) for k in by_wake)
        line = ax.plot(
            steps,
            [100 * by_wake[str(s)] for s in steps],
            marker="o",
            ms=3,
            label=r["label"],
        )
        if r.get("sleep") and "total_steps" in r and metric == "accuracy":
            ax.plot(
                r["total_steps"],
                [100 * a for a in r["accuracy"]],
                ls=":",
                color=line[0].get_color(),
                label=f"{r['label']} vs total steps",
            )
        if r.get(f"ann_{metric}") is not None:
            ax.axhline(100 * r[f"ann_{metric}"], ls="--", lw=0.8, color=line[0].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps (wake; dotted: wake + sleep)")
    ax.set_ylabel(_YLABELS.get(metric, metric))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike, steps: Sequence[int]
) -> dict[str, Path]:
    """``report.json`` and ``accuracy_vs_T.png`` in ``out_dir`` (``map50_vs_T.png`` for a
    detector's report, whose ``metric`` is "map50"; and the cost plots when rows carry
    activity); returns their paths."""
    out_dir = Path(out_dir)
    json_path = write_json(report, out_dir / "report.json")
    metric = report.get("metric", "accuracy")
    png = plot_accuracy(
        report["rows"], out_dir / f"{metric}_vs_T.png", title=report.get("title", ""), metric=metric
    )
    paths = {"json": json_path, "plot": png}
    if any("energy_ratio_by_wake" in r for r in report["rows"]):
        paths.update(plot_cost(report["rows"], out_dir, title=report.get("title", "")))
    return paths
