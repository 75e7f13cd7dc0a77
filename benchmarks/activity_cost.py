"""What counting spikes costs: simulation time with activity recording off and on.

    python benchmarks/activity_cost.py --threads 1 --out benchmarks/results/cpu/activity-cost.json

For each model (random weights, converted with IF neurons) one batch is simulated for T
steps, alternating the variants ``off`` (plain `simulate`) and ``on``
(``simulate(..., activity=True)``: hooks count events and SynOps, fan-out maps computed
once per call), ``--repeats`` times; the medians and their ratio are reported. ``--variants
off`` runs only the plain simulation, so the same command can time an older checkout of
the library (no ``activity`` argument there) against this one. Never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

import ann2snn
from ann2snn.report import environment, write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn,resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="off,on")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        torch.manual_seed(0)
        model = ann2snn.create_model(name, num_classes=10, in_channels=1, image_size=28).eval()
        snn = ann2snn.convert(model, "if")
        data = (torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,)))
        times: dict[str, list[float]] = {v: [] for v in variants}
        for v in variants:  # warm-up
            kw = {"activity": True} if v == "on" else {}
            ann2snn.simulate(snn, data, args.T, progress=False, **kw)
        for _ in range(args.repeats):
            for v in variants:
                kw = {"activity": True} if v == "on" else {}
                t0 = time.perf_counter()
                ann2snn.simulate(snn, data, args.T, progress=False, **kw)
                times[v].append(time.perf_counter() - t0)
        row = {"model": name, "T": args.T, "batch_size": args.batch_size,
               **{f"{v}_s": statistics.median(ts) for v, ts in times.items()},
               "all_s": times}  # fmt: skip
        if "on" in times and "off" in times:
            row["on_over_off"] = row["on_s"] / row["off_s"]
        rows.append(row)
        print(
            {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in row.items()
                if k != "all_s"
            }
        )
    result = {
        "command": "python " + shlex.join(sys.argv),
        "rows": rows,
        "environment": environment(),
    }
    if args.out:
        write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
