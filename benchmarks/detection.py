"""Spiking object detection: ANN and SNN mAP against T on the Fashion-MNIST scenes.

    python benchmarks/detection.py --epochs 15 --threads 1          # the docs' table
    python benchmarks/detection.py --quick                          # a few minutes, smoke

Trains `yolo_tiny` twice on ``fashion-scenes`` (or ``--dataset voc|coco --data-dir``):
with QCFS (L = 4, converted with IF neurons and with group neurons τ = L) and with CASC's
clip-quant activation (Q = 8, converted with consistent IF neurons and wake-sleep
conversion: T wake steps, then ``--casc-sleep`` sleep steps). Each SNN row gives mAP@0.5
and COCO mAP at every T of ``--T`` on the test split (CASC with the total steps, wake +
sleep, beside each figure). Training resumes from ``--runs-dir``; selection uses the
validation scenes. Writes a JSON (``--out``) and prints the tables. Never imported by the
package.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import ann2snn
from ann2snn.detection.evaluation import ann_map, evaluate_detection_snn
from ann2snn.detection.head import detector_spec
from ann2snn.methods import METHODS, neuron_options
from ann2snn.report import environment, format_table, source_revision, write_json
from ann2snn.training import TrainConfig, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-scenes")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--levels", type=int, default=4, help="QCFS L (GN τ = L)")
    p.add_argument("--casc-levels", type=int, default=8, help="clip-quant Q")
    p.add_argument(
        "--casc-sleep", type=int, default=16, help="CASC sleep steps after the T wake steps"
    )
    p.add_argument("--T", default="1,2,4,8,16")
    p.add_argument(
        "--methods", default="qcfs,casc", help="ANNs to train: qcfs (IF and GN rows), casc"
    )
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="2,000 scenes, 3 epochs, 500 test scenes")
    p.add_argument("--runs-dir", default="runs/detection")
    p.add_argument("--out", default="benchmarks/results/cpu/detection-fashion-scenes.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.limit_train = min(args.epochs, 3), args.limit_train or 2000
        args.limit_test = args.limit_test or 500
    args.T = [int(t) for t in args.T.split(",")]
    return args


def _train(args: argparse.Namespace, act: str, levels: int) -> tuple[Any, dict]:
    tag = f"{args.dataset}-yolo_tiny-{act}-L{levels}-e{args.epochs}-s{args.seed}"
    if args.limit_train:
        tag += f"-n{args.limit_train}"
    cfg = TrainConfig(
        model="yolo_tiny", dataset=args.dataset, data_dir=args.data_dir, act=act, levels=levels,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=5e-4,
        seed=args.seed, device=args.device, limit_train=args.limit_train,
        limit_test=args.limit_test, out_dir=str(Path(args.runs_dir) / tag), resume=True,
        progress=not args.no_progress,
    )  # fmt: skip
    record = train(cfg)
    return ann2snn.load(cfg.out_dir, map_location=args.device), record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaders = ann2snn.create_loaders(args.dataset, data_dir=args.data_dir, device=args.device,
                                     batch_size=args.batch_size, limit_train=args.limit_train,
                                     limit_test=args.limit_test, augment=False)  # fmt: skip
    rows, trained = [], {}
    methods = args.methods.split(",")
    # The method table decides each row's ANN, neuron and sleep; QCFS+IF and +GN share one ANN.
    for name in ("qcfs", "gn", "casc"):
        method = METHODS[name]
        if name in methods and method.act not in trained:
            levels = args.casc_levels if method.run_per_T else args.levels
            trained[method.act] = _train(args, method.act, levels)
    for act, (model, record) in trained.items():
        ann = ann_map(model, loaders.test, detector_spec(model))
        plans = []
        for method in (m for m in METHODS.values() if m.act == act):
            sleep = args.casc_sleep if method.run_per_T else 0
            opts = neuron_options(method.neuron, args.levels)
            label = {"qcfs": "QCFS+IF", "gn": f"QCFS+GN (τ={args.levels})",
                     "casc": f"CASC (CIF, Q={args.casc_levels}, sleep {args.casc_sleep})"}[method.name]  # fmt: skip
            plans.append((label, method.neuron, sleep, opts))
        for label, neuron, sleep, opts in plans:
            t0 = time.perf_counter()
            row = evaluate_detection_snn(model, loaders.test, neuron, args.T, sleep, label=label, **opts)  # fmt: skip
            row.update(ann_map50=ann["map50"], ann_map=ann["map"], epochs=record["epoch"],
                       train_time_s=round(sum(h["time_s"] for h in record["metrics"]["history"]), 1),
                       sim_time_s=round(time.perf_counter() - t0, 1))  # fmt: skip
            rows.append(row)
            print(format_table([row], args.T, metric="map50"), flush=True)
    out = {
        "benchmark": "detection",
        "command": "python benchmarks/detection.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),  # fmt: skip
        "dataset": args.dataset,
        "test_images": rows[0]["images"] if rows else 0,
        "settings": {k: v for k, v in vars(args).items()},
        "rows": rows,
        "environment": environment(),
        "source": source_revision(),
    }
    write_json(out, args.out)
    print("\nmAP@0.5 (%)\n" + format_table(rows, args.T, metric="map50"))
    print("\nCOCO mAP@[.5:.95] (%)\n" + format_table(rows, args.T, metric="map"))
    print(f"\n-> {args.out}")
    return out


if __name__ == "__main__":
    main()
