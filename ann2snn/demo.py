"""The end-to-end demo: Fashion-MNIST, a small CNN, every method, one table.

Each ANN row trains its own short run (same seed, epochs and recipe), converts it and
simulates the SNN on the held-out test split at T = 1..T_max:

* QCFS + IF       (Bu et al., 2022)  QCFS activation, IF neurons
* QCFS + GN       (Lv et al., 2024)  the same QCFS ANN on group neurons, τ = L
* NQ + IF         (Huang et al., 2024) QCFS + residual-error noise, σ calibrated per epoch
* CASC            (Li et al., 2024)  clip-quant ANN, consistent IF + wake-sleep; for each
                                     T the run has T wake steps then S sleep steps

``task="detection"`` runs the same workflow on object detection: `yolo_tiny` on the
Fashion-MNIST scenes (`ann2snn.data.scenes`), QCFS + IF, QCFS + GN and CASC, mAP@0.5 per T.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import (
    ann_accuracy,
    environment,
    evaluate_snn,
    format_cost_table,
    format_table,
    write_report,
)

__all__ = ["DemoConfig", "run_demo", "run_detection_demo", "evaluate_wake_sleep", "report_steps"]


@dataclass
class DemoConfig:
    """Settings of `run_demo`; defaults finish in a few minutes on 2 CPU cores."""

    out_dir: str = "runs/demo"
    data_dir: str | None = None
    epochs: int = 3
    levels: int = 4
    casc_levels: int = 8
    T: int = 16
    casc_sleep: int = 8  # the demo CNN is loss-free at T = Q from S = 4 (docs/benchmarks.md)
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 42
    device: str = "auto"
    methods: tuple[str, ...] | None = None  # default: every method of the task
    task: str = "classification"  # or "detection" (yolo_tiny on the Fashion-MNIST scenes)
    limit_train: int | None = None
    limit_test: int | None = None
    progress: bool = True
    activity: bool = True  # SynOps and energy per T (ann2snn.activity), printed as a table
    activity_batches: int | None = 8  # counted on the first 8 test batches (2,048 images)

    def __post_init__(self) -> None:
        if self.task not in ("classification", "detection"):
            raise ValueError(f"task must be 'classification' or 'detection', got {self.task!r}")
        allowed = ("qcfs", "gn", "nq", "casc") if self.task == "classification" else ("qcfs", "gn", "casc")  # fmt: skip
        self.methods = tuple(self.methods) if self.methods else allowed
        unknown = set(self.methods) - set(allowed)
        if unknown:
            raise ValueError(
                f"unknown {self.task} demo method(s) {sorted(unknown)}; choose from {', '.join(allowed)}"
            )
        if self.T < 1 or self.epochs < 1:
            raise ValueError("T and epochs must be >= 1")


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
    row: dict[str, Any] = {"label": label, "neuron": neuron, "sleep": sleep, "accuracy_by_wake": {},
                           "total_steps_by_wake": {}, "wall_time": 0.0}  # fmt: skip
    for t in steps:
        r = evaluate_snn(
            model, data, neuron, T=t, sleep=sleep, progress=progress, **convert_options
        )
        row["accuracy_by_wake"][str(t)] = r["accuracy_by_wake"][str(t)]
        row["total_steps_by_wake"][str(t)] = t + sleep
        # What the spikes cost (activity=True): this run's figures at its own T.
        for key in ("synops_by_wake", "snn_macs_by_wake", "energy_ratio_by_wake",
                    "firing_rate_by_wake"):  # fmt: skip
            if key in r:
                row.setdefault(key, {})[str(t)] = r[key][str(t)]
        for key in ("ann_macs", "layer_firing_rates", "energy_model", "activity_images"):
            if key in r:
                row[key] = r[key]
        row["wall_time"] += r["wall_time"]
        row["convert"] = r["convert"]
        if "calibration" in r:  # post-conversion calibration, one per T
            row.setdefault("calibration_by_wake", {})[str(t)] = r["calibration"]
    # For plots: accuracy against total steps of each separate run.
    row["total_steps"] = [t + sleep for t in steps]
    row["accuracy"] = [row["accuracy_by_wake"][str(t)] for t in steps]
    row["T"] = max(steps)
    row["margin"] = None
    return row


def _train(cfg: DemoConfig, name: str, act: str, levels: int, hooks: Any = None, **extra: Any):
    from .checkpoint import load
    from .training.loop import TrainConfig, train

    run_dir = Path(cfg.out_dir) / name
    detection = cfg.task == "detection"
    tc = TrainConfig(
        model="yolo_tiny" if detection else "cnn", data_dir=cfg.data_dir, act=act, levels=levels,
        dataset="fashion-scenes" if detection else "fashion-mnist",
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cfg.device,
        out_dir=str(run_dir), limit_train=cfg.limit_train, limit_test=cfg.limit_test,
        progress=cfg.progress, resume=True, **extra,
    )  # fmt: skip
    start = time.perf_counter()
    record = train(tc, hooks=hooks)
    return load(run_dir), record, time.perf_counter() - start


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Train, convert and evaluate every method; print the table; write report + plot."""
    from .calibration.noise import nq_epoch_hook
    from .data import create_loaders

    cfg = cfg or DemoConfig()
    if cfg.task == "detection":
        return run_detection_demo(cfg)
    start = time.perf_counter()
    loaders = create_loaders(
        "fashion-mnist", data_dir=cfg.data_dir, batch_size=256, seed=cfg.seed,
        limit_train=cfg.limit_train, limit_test=cfg.limit_test,
        device=None if cfg.device == "auto" else cfg.device,
    )  # fmt: skip
    test = loaders.test
    steps = report_steps(cfg.T)
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}

    if "qcfs" in cfg.methods or "gn" in cfg.methods:
        model, _, secs = _train(cfg, "qcfs", "qcfs", cfg.levels)
        timings["train_qcfs_s"] = secs
        acc = ann_accuracy(model, test)
        if "qcfs" in cfg.methods:
            rows.append(
                {
                    **evaluate_snn(
                        model,
                        test,
                        "if",
                        T=cfg.T,
                        progress=cfg.progress,
                        label=f"QCFS+IF (L={cfg.levels})",
                        activity=cfg.activity,
                        activity_batches=cfg.activity_batches,
                    ),
                    "ann_accuracy": acc,
                }
            )
        if "gn" in cfg.methods:
            rows.append(
                {
                    **evaluate_snn(
                        model,
                        test,
                        "gn",
                        T=cfg.T,
                        tau=cfg.levels,
                        progress=cfg.progress,
                        label=f"QCFS+GN (tau={cfg.levels})",
                        activity=cfg.activity,
                        activity_batches=cfg.activity_batches,
                    ),
                    "ann_accuracy": acc,
                }
            )
    if "nq" in cfg.methods:
        model, record, secs = _train(
            cfg, "nq", "nq", cfg.levels, hooks={"on_epoch_end": nq_epoch_hook(steps=4)}
        )
        timings["train_nq_s"] = secs
        row = evaluate_snn(model, test, "if", T=cfg.T, progress=cfg.progress,
                           label=f"NQ+IF (L={cfg.levels})", activity=cfg.activity,
                           activity_batches=cfg.activity_batches)  # fmt: skip
        row["ann_accuracy"] = ann_accuracy(model, test)
        row["sigma"] = record.get("extra", {}).get("sigma")
        rows.append(row)
    if "casc" in cfg.methods:
        model, _, secs = _train(cfg, "casc", "clipq", cfg.casc_levels)
        timings["train_casc_s"] = secs
        row = evaluate_wake_sleep(model, test, steps, cfg.casc_sleep, cfg.progress,
                                  label=f"CASC (Q={cfg.casc_levels})", activity=cfg.activity,
                                  activity_batches=cfg.activity_batches)  # fmt: skip
        row["ann_accuracy"] = ann_accuracy(model, test)
        rows.append(row)

    timings["total_s"] = time.perf_counter() - start
    table = format_table(rows, steps)
    cost_table = format_cost_table(rows, steps) if cfg.activity else None
    head = {"title": "ann2snn demo: Fashion-MNIST, small CNN", "dataset": "fashion-mnist", "model": "cnn"}  # fmt: skip
    text = table + ("\n\n" + cost_table if cost_table else "")
    return _finish(cfg, head, steps, rows, timings, text, table=table, cost_table=cost_table)


def _finish(cfg: DemoConfig, head: dict[str, Any], steps: list[int], rows: list[dict[str, Any]],
            timings: dict[str, float], text: str, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Write the demo's report.json and plot, print ``text`` and where they went."""
    report = {**head, "settings": {k: v for k, v in cfg.__dict__.items()}, "steps": steps,
              "rows": rows, "timings": timings, "environment": environment(), **extra}  # fmt: skip
    paths = write_report(report, cfg.out_dir, steps)
    print(text)
    print(
        f"\nreport: {paths['json']}\nplot:   {paths['plot']}\nwall time: {timings['total_s']:.1f} s"
    )
    return report


def run_detection_demo(cfg: DemoConfig) -> dict[str, Any]:
    """`run_demo` for ``task="detection"``: train `yolo_tiny` with QCFS (IF and GN rows)
    and clip-quant (CASC), then print mAP@0.5 per T on the test scenes."""
    from .data import create_loaders
    from .detection.evaluation import ann_map, evaluate_detection_snn
    from .detection.head import detector_spec

    start = time.perf_counter()
    loaders = create_loaders(
        "fashion-scenes", data_dir=cfg.data_dir, batch_size=cfg.batch_size, seed=cfg.seed,
        limit_train=cfg.limit_train, limit_test=cfg.limit_test, augment=False,
        device=None if cfg.device == "auto" else cfg.device,
    )  # fmt: skip
    steps = report_steps(cfg.T)
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    plans = []
    if "qcfs" in cfg.methods or "gn" in cfg.methods:
        plans.append(("qcfs", "qcfs", cfg.levels, [("if", "qcfs", f"QCFS+IF (L={cfg.levels})", {}),
                      ("gn", "gn", f"QCFS+GN (tau={cfg.levels})", {"tau": cfg.levels})]))  # fmt: skip
    if "casc" in cfg.methods:
        plans.append(("casc", "clipq", cfg.casc_levels, [("cif", "casc", f"CASC (Q={cfg.casc_levels})", {})]))  # fmt: skip
    for name, act, levels, runs in plans:
        model, _, secs = _train(cfg, name, act, levels)
        timings[f"train_{name}_s"] = secs
        ann = ann_map(model, loaders.test, detector_spec(model))
        for neuron, method, label, opts in runs:
            if method not in cfg.methods:
                continue
            sleep = cfg.casc_sleep if neuron == "cif" else 0
            row = evaluate_detection_snn(model, loaders.test, neuron, steps, sleep, label=label, **opts)  # fmt: skip
            row.update(ann_map50=ann["map50"], ann_map=ann["map"])
            rows.append(row)
    timings["total_s"] = time.perf_counter() - start
    table = format_table(rows, steps, metric="map50")
    head = {"title": "ann2snn detection demo: Fashion-MNIST scenes, yolo_tiny (mAP@0.5)",
            "metric": "map50", "dataset": "fashion-scenes", "model": "yolo_tiny"}  # fmt: skip
    return _finish(cfg, head, steps, rows, timings, "mAP@0.5 (%) on the test scenes\n" + table, table=table)  # fmt: skip
