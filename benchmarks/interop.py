"""Other simulators running ann2snn's SNNs: test accuracy at each T in ann2snn, through
our own NIR round trip, as NIR specifies the file, in SpikingJelly through
`ann2snn.deploy.to_spikingjelly` (its own ``IFNode``s, reset by subtraction, exact), and in
each NIR reader on the file of its profile (``export_nir(..., profile=NAME)``, loaded and
run as that reader's users do: `ann2snn.deploy.readers.run_reader`).

    python benchmarks/interop.py runs/demo/qcfs --T 1,2,4,8,16 --threads 2

Rows: QCFS+IF and QCFS+GN (τ = L) of the run, on the test split. Readers that are not
installed (`make interop`) are reported as such; a reader that fails, with its error. This
file is never imported by the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ann2snn import convert, export_nir, import_nir, load, simulate
from ann2snn.checkpoint import RunRecord
from ann2snn.data import create_loaders
from ann2snn.deploy import to_sinabs, to_spikingjelly
from ann2snn.deploy.nir_profiles import NIR_PROFILES
from ann2snn.deploy.readers import READERS, SIDE_PYTHON, reader_available, run_reader
from ann2snn.evaluation import ann_accuracy
from ann2snn.report import environment, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (ann2snn train) of a QCFS/NQ network")
    p.add_argument("--T", default="1,2,4,8,16")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--limit-test", type=int, help="the first N test images only")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--out", default="benchmarks/results/cpu/interop.json")
    p.add_argument("--adapters-only", action="store_true",
                   help="only the direct adapters this environment has (run by the main "
                   "run in the side environment for to_sinabs)")  # fmt: skip
    args = p.parse_args(argv)
    args.T = sorted({int(t) for t in args.T.split(",")})
    return args


def _accuracy(steps_of: Callable[[torch.Tensor], torch.Tensor], data: Any, T: list[int]) -> dict:
    """Accuracy after each T of a runner giving the outputs ``[T_max, B, classes]``."""
    correct, images = dict.fromkeys(T, 0), 0
    with torch.no_grad():
        for x, y in data:
            mean = steps_of(x).cumsum(0)
            for t in T:
                correct[t] += int((mean[t - 1].argmax(-1) == y).sum())
            images += len(y)
    return {str(t): correct[t] / images for t in T}


def _stepped(net: Any, T: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A step-by-step network (``net.reset()``, ``net(x)`` per step) as a runner."""

    def steps_of(x: torch.Tensor) -> torch.Tensor:
        net.reset()
        return torch.stack([net(x) for _ in range(T)])

    return steps_of


def _ours(net: Any, data: Any, T: list[int]) -> dict:
    res = simulate(net, data, max(T), progress=False)
    return {str(t): res.accuracy[t - 1] for t in T}


def _adapters(
    snn: Any, example: torch.Tensor, data: Any, T: list[int], only: list[str] | None = None
) -> dict:
    """The simulators' own neurons through ann2snn's adapters (exact), where installed."""
    row: dict[str, Any] = {}
    for label, adapt in (("spikingjelly, to_spikingjelly", to_spikingjelly),
                         ("sinabs, to_sinabs", to_sinabs)):  # fmt: skip
        if only and label.split(",")[0] not in only:
            continue
        try:
            row[label] = _accuracy(_stepped(adapt(snn, example), max(T)), data, T)
        except ImportError:
            row[label + " (adapter)"] = "not installed here"
    return row


def _side_adapters(argv: list[str], rows: list[dict]) -> None:
    """`to_sinabs` where sinabs is: the side environment (`make interop`), if not here."""
    if reader_available("sinabs") != "side":
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.json"
        cmd = [str(SIDE_PYTHON), __file__, *argv, "--adapters-only", "--out", str(out)]
        root = Path(__file__).resolve().parents[1]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(root)})
        side = json.loads(out.read_text())["rows"]
    for row, theirs in zip(rows, side):
        if "sinabs, to_sinabs" in theirs:  # in the place of the "not installed here"
            placeholder = "sinabs, to_sinabs (adapter)"
            merged = {("sinabs, to_sinabs" if k == placeholder else k): v for k, v in row.items()}
            merged["sinabs, to_sinabs"] = theirs["sinabs, to_sinabs"]
            row.clear()
            row.update(merged)


def _row(snn: Any, example: torch.Tensor, data: Any, T: list[int], tmp: Path) -> dict:
    """One network through every simulator: accuracy at each T, or why it has none."""
    row: dict[str, Any] = {"ann2snn": _ours(snn, data, T)}
    export_nir(snn, tmp / "ann2snn.nir", example)
    row["ann2snn, NIR round trip"] = _ours(import_nir(tmp / "ann2snn.nir"), data, T)
    spec = import_nir(tmp / "ann2snn.nir", metadata=False)
    row["NIR as specified (profile nir)"] = _ours(spec, data, T)
    row.update(_adapters(snn, example, data, T))
    for name in READERS:
        label = f"{name}, NIR file (profile {name})"
        if reader_available(name) is None:
            row[label] = "not installed (make interop)"
            continue
        path = tmp / f"{name}.nir"
        row[f"{name} loses"] = export_nir(snn, path, example, profile=name)
        start = time.perf_counter()
        try:
            row[label] = _accuracy(lambda x, p=path, n=name: run_reader(n, p, x, max(T)), data, T)
        except Exception as err:  # noqa: BLE001 - a reader's failure is the result
            row[label] = f"{type(err).__name__}: {str(err)[-300:]}"
        row[f"{name} seconds"] = round(time.perf_counter() - start, 1)
    return row


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.run)
    record = RunRecord.of(model)
    loaders = create_loaders(record.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                             augment=False, device="cpu", limit_test=args.limit_test)  # fmt: skip
    example = next(iter(loaders.test))[0][:4]
    rows = []
    for neuron, options in (("if", {}), ("gn", {"tau": record.get("levels") or 4})):
        snn = convert(model, neuron, **options)
        if args.adapters_only:  # the side environment's part: to_sinabs
            rows.append(_adapters(snn, example, loaders.test, args.T, ["sinabs"]))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            row = {"neuron": neuron, **options}
            row.update(_row(snn, example, loaders.test, args.T, Path(tmp)))
        rows.append(row)
        print({k: v for k, v in row.items() if "loses" not in k}, file=sys.stderr)
    if args.adapters_only:
        write_json({"rows": rows}, Path(args.out))
        return {"rows": rows}
    _side_adapters(argv, rows)
    results = {
        "benchmark": "interop",
        "command": "python benchmarks/interop.py " + shlex.join(argv),
        "run": args.run,
        "ann_accuracy": ann_accuracy(model, loaders.test),
        "test_images": sum(len(y) for _, y in loaders.test),
        "readers": {n: NIR_PROFILES[n].loads for n in READERS},
        "rows": rows,
        "environment": environment(),
    }
    results["table"] = format_table(results, args.T)
    write_json(results, Path(args.out))
    print(results["table"])
    return results


def format_table(results: dict[str, Any], steps: list[int]) -> str:
    head = ["network", "simulator"] + [f"T={t}" for t in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results["rows"]:
        name = f"QCFS+{r['neuron'].upper()}" + (f" (τ={r['tau']})" if "tau" in r else "")
        for sim, acc in r.items():
            if isinstance(acc, dict):
                cells = [f"{100 * acc[str(t)]:.2f}" for t in steps]
                lines.append("| " + " | ".join([name, sim, *cells]) + " |")
            elif sim.endswith(")") and isinstance(acc, str):  # a reader without a result
                lines.append(f"| {name} | {sim} | {acc} |" + " |" * (len(steps) - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
