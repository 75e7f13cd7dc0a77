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

from ._io import environment
from .data import create_loaders
from .evaluation import ann_accuracy, evaluate_snn, evaluate_wake_sleep, report_steps
from .methods import METHODS, Method, epoch_hook, neuron_options
from .report import format_cost_table, format_table, write_report

__all__ = ["DemoConfig", "run_demo", "run_detection_demo"]


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
        # NQ selects epochs by classification accuracy: no detection row.
        allowed = tuple(m for m in METHODS if self.task == "classification" or m != "nq")
        self.methods = tuple(self.methods) if self.methods else allowed
        unknown = set(self.methods) - set(allowed)
        if unknown:
            raise ValueError(
                f"unknown {self.task} demo method(s) {sorted(unknown)}; choose from "
                f"{', '.join(allowed)}"
            )
        if self.T < 1 or self.epochs < 1:
            raise ValueError("T and epochs must be >= 1")


def _train(cfg: DemoConfig, name: str, act: str, levels: int, hooks: Any = None, **extra: Any):
    from .checkpoint import load
    from .training import TrainConfig, train

    run_dir = Path(cfg.out_dir) / name
    detection = cfg.task == "detection"
    tc = TrainConfig(
        model="yolo_tiny" if detection else "cnn",
        data_dir=cfg.data_dir,
        act=act,
        levels=levels,
        dataset="fashion-scenes" if detection else "fashion-mnist",
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        device=cfg.device,
        out_dir=str(run_dir),
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
        progress=cfg.progress,
        resume=True,
        **extra,
    )
    start = time.perf_counter()
    record = train(tc, hooks=hooks)
    return load(run_dir), record, time.perf_counter() - start


def _levels(cfg: DemoConfig, method: Method) -> int:
    return cfg.casc_levels if method.run_per_T else cfg.levels


def _method_row(cfg: DemoConfig, method: Method, model: Any, test: Any, steps: list[int]) -> dict:
    """One table row: ``model`` converted and simulated as ``method`` prescribes."""
    levels = _levels(cfg, method)
    options = dict(
        activity=cfg.activity,
        activity_batches=cfg.activity_batches,
        label=method.label(levels),
        **neuron_options(method.neuron, levels),
    )
    if method.run_per_T:  # CASC: one wake-sleep run per T
        return evaluate_wake_sleep(
            model, test, steps, cfg.casc_sleep, cfg.progress, neuron=method.neuron, **options
        )
    return evaluate_snn(model, test, method.neuron, T=cfg.T, progress=cfg.progress, **options)


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Train, convert and evaluate every method; print the table; write report + plot.

    Methods that train the same activation (QCFS+IF and QCFS+GN) share one trained ANN,
    in a run folder named after the first of them."""
    cfg = cfg or DemoConfig()
    if cfg.task == "detection":
        return run_detection_demo(cfg)
    start = time.perf_counter()
    loaders = create_loaders(
        "fashion-mnist",
        data_dir=cfg.data_dir,
        batch_size=256,
        seed=cfg.seed,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
        device=None if cfg.device == "auto" else cfg.device,
    )
    test, steps = loaders.test, report_steps(cfg.T)
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    trained: dict[str, tuple[Any, dict, float]] = {}  # act -> (model, record, ANN accuracy)
    for method in (METHODS[name] for name in METHODS if name in cfg.methods):
        if method.act not in trained:
            hook = epoch_hook(method.act)
            model, record, secs = _train(
                cfg,
                method.name,
                method.act,
                _levels(cfg, method),
                hooks={"on_epoch_end": hook} if hook else None,
            )
            timings[f"train_{method.name}_s"] = secs
            trained[method.act] = (model, record, ann_accuracy(model, test))
        model, record, acc = trained[method.act]
        row = _method_row(cfg, method, model, test, steps)
        row["ann_accuracy"] = acc
        if method.act == "nq":
            row["sigma"] = record.get("extra", {}).get("sigma")
        rows.append(row)
    timings["total_s"] = time.perf_counter() - start
    table = format_table(rows, steps)
    cost_table = format_cost_table(rows, steps) if cfg.activity else None
    head = {
        "title": "ann2snn demo: Fashion-MNIST, small CNN",
        "dataset": "fashion-mnist",
        "model": "cnn",
    }
    text = table + ("\n\n" + cost_table if cost_table else "")
    return _finish(cfg, head, steps, rows, timings, text, table=table, cost_table=cost_table)


def _finish(
    cfg: DemoConfig,
    head: dict[str, Any],
    steps: list[int],
    rows: list[dict[str, Any]],
    timings: dict[str, float],
    text: str,
    **extra: Any,
) -> dict[str, Any]:
    """Write the demo's report.json and plot, print ``text`` and where they went."""
    report = {
        **head,
        "settings": {k: v for k, v in cfg.__dict__.items()},
        "steps": steps,
        "rows": rows,
        "timings": timings,
        "environment": environment(),
        **extra,
    }
    paths = write_report(report, cfg.out_dir, steps)
    print(text)
    print(
        f"\nreport: {paths['json']}\nplot:   {paths['plot']}\nwall time: {timings['total_s']:.1f} s"
    )
    return report


def run_detection_demo(cfg: DemoConfig) -> dict[str, Any]:
    """`run_demo` for ``task="detection"``: train `yolo_tiny` with QCFS (IF and GN rows)
    and clip-quant (CASC), then print mAP@0.5 per T on the test scenes."""
    from .detection.evaluation import ann_map, evaluate_detection_snn
    from .detection.head import detector_spec

    start = time.perf_counter()
    loaders = create_loaders(
        "fashion-scenes",
        data_dir=cfg.data_dir,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
        augment=False,
        device=None if cfg.device == "auto" else cfg.device,
    )
    steps = report_steps(cfg.T)
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    trained: dict[str, tuple[Any, dict]] = {}  # act -> (model, its ANN mAP)
    for method in (METHODS[name] for name in METHODS if name in cfg.methods):
        levels = _levels(cfg, method)
        if method.act not in trained:
            model, _, secs = _train(cfg, method.name, method.act, levels)
            timings[f"train_{method.name}_s"] = secs
            trained[method.act] = (model, ann_map(model, loaders.test, detector_spec(model)))
        model, ann = trained[method.act]
        sleep = cfg.casc_sleep if method.run_per_T else 0
        row = evaluate_detection_snn(
            model,
            loaders.test,
            method.neuron,
            steps,
            sleep,
            label=method.label(levels),
            **neuron_options(method.neuron, levels),
        )
        row.update(ann_map50=ann["map50"], ann_map=ann["map"])
        rows.append(row)
    timings["total_s"] = time.perf_counter() - start
    table = format_table(rows, steps, metric="map50")
    head = {
        "title": "ann2snn detection demo: Fashion-MNIST scenes, yolo_tiny (mAP@0.5)",
        "metric": "map50",
        "dataset": "fashion-scenes",
        "model": "yolo_tiny",
    }
    return _finish(
        cfg, head, steps, rows, timings, "mAP@0.5 (%) on the test scenes\n" + table, table=table
    )
