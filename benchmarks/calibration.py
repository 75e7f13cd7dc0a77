"""Post-conversion calibration: accuracy at T = 1, 2, 4 before/after each method.

    python benchmarks/calibration.py runs/demo/qcfs runs/demo/nq --T 1,2,4 --batches 8

For every checkpoint (a run folder written by `ann2snn train`): the ANN's test accuracy,
the IF SNN's at each T as converted, and for each method (`ann2snn.calibrate`: ``bias``,
``offset``) the SNN calibrated for that T on ``--batches`` batches of the validation
split, simulated for T steps on the full test split. Calibration time is given in
seconds and as a fraction of the run's mean epoch time from its record (training +
evaluation + checkpoint, measured when it was trained). ReLU-trained networks get
θ = 99.9th percentile on the validation split first (as ``ann2snn eval`` does).
This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ann2snn import CalibrationLog, calibrate, convert, load, simulate
from ann2snn.data import create_loaders
from ann2snn.evaluation import ann_accuracy
from ann2snn.report import environment, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (ann2snn train)")
    p.add_argument("--T", default="1,2,4")
    p.add_argument("--methods", default="bias,offset")
    p.add_argument("--batches", type=int, default=8, help="validation batches per calibration")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir", help="where the dataset lives (default: the usual places)")
    p.add_argument(
        "--rounds", type=int, default=1, help="offset: repeat the pass (calibrate rounds=)"
    )
    p.add_argument("--no-guard", action="store_true",
                   help="apply every layer's correction (calibrate(..., guard=False))")  # fmt: skip
    p.add_argument("--out", default="benchmarks/results/cpu/calibration.json")
    args = p.parse_args(argv)
    args.T = sorted({int(t) for t in args.T.split(",")})
    args.methods = [m for m in args.methods.split(",") if m]
    return args


def evaluate_run(run: str, args: argparse.Namespace) -> dict[str, Any]:
    model = load(run)
    record = model.ann2snn_record
    act = record.get("model_kwargs", {}).get("act") or record.get("activation")
    loaders = create_loaders(record["recipe"]["dataset"], data_dir=args.data_dir,
                             batch_size=args.batch_size, seed=record["recipe"]["seed"],
                             augment=False)  # fmt: skip
    dev = torch.device("cpu")
    history = record["metrics"]["history"]
    epoch_s = sum(h["time_s"] for h in history) / max(len(history), 1)
    entry: dict[str, Any] = {
        "run": run, "model": record["model"], "act": act, "epochs": record["epoch"],
        "ann_accuracy": ann_accuracy(model, loaders.test, dev), "mean_epoch_s": epoch_s,
        "plain": {}, "methods": {m: {} for m in args.methods},
    }  # fmt: skip
    snn = convert(model, "if", calibration=loaders.val if act == "relu" else None)
    plain = simulate(snn, loaders.test, max(args.T), progress=False)
    entry["plain"] = {str(t): plain.accuracy[t - 1] for t in args.T}
    for method in args.methods:
        for t in args.T:
            log = CalibrationLog(method, t)
            start = time.perf_counter()
            rounds = {"rounds": args.rounds} if method == "offset" else {}
            fixed = calibrate(snn, loaders.val, T=t, method=method, batches=args.batches,
                              guard=not args.no_guard, log=log, **rounds)  # fmt: skip
            seconds = time.perf_counter() - start
            res = simulate(fixed, loaders.test, t, progress=False)
            kept = sum(1 for v in log.layers.values() if v.get("kept"))
            entry["methods"][method][str(t)] = {
                "accuracy": res.accuracy[-1], "seconds": seconds,
                "fraction_of_epoch": seconds / epoch_s if epoch_s else None,
                "images": log.images, "layers_kept": kept, "layers": len(log.layers),
            }  # fmt: skip
            print(f"{run} {method} T={t}: {100 * res.accuracy[-1]:.2f} ({seconds:.1f} s, "
                  f"{kept}/{len(log.layers)} layers kept)", file=sys.stderr)  # fmt: skip
    return entry


def format_table(rows: list[dict[str, Any]], steps: list[int], methods: list[str]) -> str:
    head = ["model (run)", "ANN", "method"] + [f"T={t}" for t in steps] + ["calib. s (T=2)", "× epoch"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        name = f"{r['model']} {r['act']} {r['epochs']} ep. ({Path(r['run']).name})"
        cells = [name, f"{100 * r['ann_accuracy']:.2f}", "none"]
        lines.append("| " + " | ".join(cells + [f"{100 * r['plain'][str(t)]:.2f}" for t in steps] + ["—", "—"]) + " |")  # fmt: skip
        for m in methods:
            got = r["methods"][m]
            two = got.get("2", {})
            sec = f"{two['seconds']:.1f}" if two else "—"
            frac = f"{two['fraction_of_epoch']:.2f}" if two.get("fraction_of_epoch") else "—"
            accs = [f"{100 * got[str(t)]['accuracy']:.2f}" for t in steps]
            lines.append("| " + " | ".join(["", "", m] + accs + [sec, frac]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "benchmark": "calibration",
        "command": "python benchmarks/calibration.py " + shlex.join(argv),
        "settings": {
            "T": args.T,
            "methods": args.methods,
            "batches": args.batches,
            "batch_size": args.batch_size,
        },  # fmt: skip
        "environment": environment(),
        "rows": [],
    }
    for run in args.runs:
        results["rows"].append(evaluate_run(run, args))
        results["table"] = format_table(results["rows"], args.T, args.methods)
        write_json(results, Path(args.out))
    print(results.get("table", ""))
    return results


if __name__ == "__main__":
    main()
