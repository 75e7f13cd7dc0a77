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
        presim = r.get("presim_steps")  # COS: steps each layer pre-simulates, in total
        if r.get("total_steps_by_wake") and r.get("sleep"):  # one run per T, then the sleep
            label += f" (T wake + {r['sleep']} sleep)"
        elif presim:  # COS: every layer pre-simulates before its first real step
            label += f" (T + {presim} pre-sim steps)"
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
    plt = _pyplot()
    rows = [r for r in rows if "energy_ratio_by_wake" in r]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    points, values = [], []
    for i, r in enumerate(rows):
        ts = sorted(int(k) for k in r["energy_ratio_by_wake"] if k in r["accuracy_by_wake"])
        xs = [r["energy_ratio_by_wake"][str(t)] for t in ts]
        ys = [100 * r["accuracy_by_wake"][str(t)] for t in ts]
        marker = _MARKERS[i % len(_MARKERS)]
        line = ax.plot(xs, ys, marker=marker, ms=4, label=r["label"])
        points += [(t, x, y, line[0].get_color()) for t, x, y in zip(ts, xs, ys)]
        values += ys
    values += _ann_lines(ax, rows, "accuracy")
    ax.axvline(1.0, color="grey", lw=0.8, label="SNN energy = ANN energy")
    ax.set_xscale("log")
    ax.set_ylim(*_percent_range(values))
    _label_points(ax, points)
    ax.set_xlabel("SNN energy / ANN energy per image (45 nm: 0.9 pJ per AC, 4.6 pJ per MAC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title + ("\n" if title else "") + "points labelled with their time steps T")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = {"energy_plot": out_dir / "accuracy_vs_energy.png"}
    save_figure(fig, paths["energy_plot"])
    plt.close(fig)
    paths["rates_plot"] = _plot_rates(plt, rows, out_dir / "firing_rates.png", title)
    return paths


def _plot_rates(plt: Any, rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Bars: each spiking layer's firing rate over the whole run, one colour per method."""
    names = list(rows[0]["layer_firing_rates"]) if rows else []
    fig, ax = plt.subplots(figsize=(max(6.4, 0.7 * len(names) + 2), 4.4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        rates = [r["layer_firing_rates"].get(n, 0.0) for n in names]
        steps = max(int(k) for k in r["energy_ratio_by_wake"])
        label = f"{r['label']} (T = {steps})"
        ax.bar([j + i * width for j in range(len(names))], rates, width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
    ax.set_xticklabels(_short_names(names), rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("spiking layer, input side to output side")
    ax.set_ylabel("spike events per neuron per step")
    ax.set_title(title + ("\n" if title else "") + "firing rate per layer over the whole run")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short_names(names: Sequence[str]) -> list[str]:
    """'features.10.neuron' → '3 features.10': the layer's place in the network, then the
    last two parts of its module path that are not the neuron itself."""
    out = []
    for i, name in enumerate(names, 1):
        parts = [p for p in name.split(".") if p not in ("neuron", "act", "spike")]
        out.append(f"{i} " + ".".join(parts[-2:]) if parts else str(i))
    return out


def _ann_lines(ax: Any, rows: Sequence[dict[str, Any]], metric: str) -> list[float]:
    """Dashed ANN references, in the legend with their value: one line per distinct ANN
    (rows converted from the same ANN share it). Returns the values drawn (%)."""
    drawn: dict[float, str] = {}
    for r in rows:
        value = r.get(f"ann_{metric}")
        if value is None:
            continue
        drawn.setdefault(round(100 * value, 2), r["label"])
    single = len(drawn) == 1
    for k, (value, label) in enumerate(sorted(drawn.items())):
        name = "ANN" if single else f"ANN of {label}"
        ax.axhline(
            value,
            ls="--",
            lw=0.9,
            color="k" if single else f"C{k}",
            alpha=0.7,
            label=f"{name} ({value:.2f} %)",
        )
    return list(drawn)


def _percent_range(values: Sequence[float]) -> tuple[float, float]:
    """A y-range in % that shows the data without zooming onto noise: whole tens around the
    values, at least 20 points tall, within 0..100."""
    if not values:
        return 0.0, 100.0
    low = max(0.0, 10 * ((min(values) - 5) // 10))
    high = min(100.0, 10 * -(-(max(values) + 5) // 10))
    if high - low < 20:
        low, high = max(0.0, high - 20), max(20.0, high)
    return low, high


def _label_points(ax: Any, points: Sequence[tuple[int, float, float, str]]) -> None:
    """Label points with ``T=t`` where there is room: a label is left out when it would
    land within 14 px of one already placed (T = 1, 2, 4, ... go first)."""
    placed: list[tuple[float, float]] = []
    order = sorted(points, key=lambda p: (p[0] & (p[0] - 1) != 0, p[0]))
    for t, x, y, color in order:
        px, py = ax.transData.transform((x, y))
        if any(abs(px - qx) < 22 and abs(py - qy) < 14 for qx, qy in placed):
            continue
        placed.append((px, py))
        ax.annotate(
            f"T={t}", (x, y), fontsize=7, color=color, xytext=(3, 3), textcoords="offset points"
        )


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
    total steps for sleep schedules simulated in one run; the ANN's value as a dashed line
    in the legend; the y-axis in whole tens around the values, never zoomed onto noise."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    values, ticks, sleep = [], set(), False
    for i, r in enumerate(rows):
        by_wake = r[f"{metric}_by_wake"]
        steps = sorted(int(k) for k in by_wake)
        ys = [100 * by_wake[str(s)] for s in steps]
        marker = _MARKERS[i % len(_MARKERS)]
        line = ax.plot(steps, ys, marker=marker, ms=4, label=r["label"])
        values += ys
        ticks.update(steps)
        if r.get("sleep") and "total_steps" in r and metric == "accuracy":
            sleep = True
            ax.plot(
                r["total_steps"],
                [100 * a for a in r["accuracy"]],
                ls=":",
                color=line[0].get_color(),
                label=f"{r['label']}, wake + sleep steps",
            )
            ticks.update(r["total_steps"])
    values += _ann_lines(ax, rows, metric)
    ax.set_xscale("log", base=2)
    shown = sorted(t for t in ticks if t & (t - 1) == 0) or sorted(ticks)
    ax.set_xticks(shown, [str(t) for t in shown])
    ax.minorticks_off()
    ax.set_ylim(*_percent_range(values))
    ax.set_xlabel("time steps T (wake)" + ("; dotted: wake + sleep" if sleep else ""))
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
