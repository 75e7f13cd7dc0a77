"""Ablations of λ training and NQ's σ calibration: one seed, one recipe, one model.

    python benchmarks/ablation.py --model cnn --epochs 10 --threads 1

Each variant is one run of `benchmarks/accuracy.py` (same seed, epochs, lr, batch size,
weight decay 5e-4, crop + flip); only the setting under test differs:

* QCFS: λ trained as log λ or raw λ (the papers), weight decay on λ on or off;
* NQ:   log or raw λ; σ estimated on the validation split or on augmented training
        batches (the reference code's calibration loader).

The table gives the ANN and the IF SNN at T = 1, 2, 4, 8 on the full test split
(selection: validation split). Each variant's JSON is kept beside the summary, and
training resumes (``--runs-dir``), so an interrupted ablation continues where it stopped.
This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402

from ann2snn.report import environment, write_json  # noqa: E402

#: (name, method, accuracy.py flags)
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("QCFS, log λ, no λ decay (default)", "qcfs", []),
    ("QCFS, log λ, λ decay", "qcfs", ["--threshold-decay", "on"]),
    ("QCFS, raw λ, λ decay (papers)", "qcfs", ["--threshold-param", "raw"]),
    ("QCFS, raw λ, no λ decay", "qcfs", ["--threshold-param", "raw", "--threshold-decay", "off"]),
    ("NQ, log λ, σ on validation (default)", "nq", []),
    ("NQ, raw λ, λ decay, σ on validation", "nq", ["--threshold-param", "raw"]),
    ("NQ, log λ, σ on augmented training batches", "nq", ["--nq-augment"]),
    ("NQ, raw λ, λ decay, σ on augmented training (reference)", "nq",
     ["--threshold-param", "raw", "--nq-augment"]),
]  # fmt: skip
STEPS = (1, 2, 4, 8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--variants", help="comma-separated indices into VARIANTS (default: all)")
    p.add_argument("--runs-dir", default="runs/ablation")
    p.add_argument("--out", help="summary JSON (default benchmarks/results/cpu/ablation-<model>.json)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.out = Path(args.out or f"benchmarks/results/cpu/ablation-{args.model}.json")
    picked = range(len(VARIANTS)) if not args.variants else map(int, args.variants.split(","))
    args.variants = sorted(set(picked))
    return args


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["variant", "ANN"] + [f"T={t}" for t in STEPS] + ["final λ (first, last layer)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        acc = [f"{100 * r['snn'][str(t)]:.2f}" for t in STEPS]
        lam = r.get("thresholds") or []
        lam_s = f"{lam[0]:.3g}, {lam[-1]:.3g}" if lam else "—"
        lines.append("| " + " | ".join([r["variant"], f"{100 * r['ann']:.2f}", *acc, lam_s]) + " |")
    return "\n".join(lines)


def _thresholds(run_dir: str) -> list[float]:
    from ann2snn import load
    from ann2snn.nn.activations import QCFS

    model = load(run_dir)
    return [float(m.threshold.detach()) for m in model.modules() if isinstance(m, QCFS)]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    part_dir = args.out.with_suffix("")  # one JSON per variant beside the summary
    common = ["--dataset", args.dataset, "--models", args.model, "--epochs", str(args.epochs),
              "--lr", str(args.lr), "--seed", str(args.seed), "--T", ",".join(map(str, STEPS)),
              "--runs-dir", args.runs_dir, "--device", "cpu", "--compile", "off"]  # fmt: skip
    for flag in ("threads", "limit_train", "limit_test", "data_dir"):
        if getattr(args, flag):
            common += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.no_progress:
        common.append("--no-progress")
    summary: dict[str, Any] = {
        "benchmark": "ablation",
        "command": "python benchmarks/ablation.py " + shlex.join(argv),
        "settings": {
            k: getattr(args, k)
            for k in ("model", "dataset", "epochs", "lr", "seed", "limit_train", "limit_test")
        },  # fmt: skip
        "environment": environment(),
        "rows": [],
    }
    for i in args.variants:
        name, method, flags = VARIANTS[i]
        part = part_dir / f"variant-{i}.json"
        res = accuracy.main(common + ["--methods", method, "--out", str(part), *flags])
        entry = res["models"][args.model]
        row, training = entry["rows"][method], entry["training"][method]
        summary["rows"].append({
            "variant": name, "index": i, "method": method, "flags": flags,
            "ann": row["ann_accuracy"], "snn": row["snn_accuracy"],
            "thresholds": _thresholds(training["run_dir"]),
            "sigma": training.get("sigma_final"), "best_epoch": training["best_epoch"],
            "mean_epoch_time_s": training["mean_epoch_time_s"], "json": str(part),
        })  # fmt: skip
        summary["table"] = format_table(summary["rows"])
        write_json(summary, args.out)
    print(summary.get("table", ""))
    return summary


if __name__ == "__main__":
    main()
