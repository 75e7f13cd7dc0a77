"""Other simulators running ann2snn's SNNs: test accuracy at each T in ann2snn, in
SpikingJelly through `ann2snn.deploy.to_spikingjelly` (its own ``IFNode``s, reset by
subtraction), in SpikingJelly reading the NIR file (``import_from_nir(path, dt=1.0)``), and in
sinabs and Norse reading the ``sum-pool`` profile's file (when installed; the error they raise
otherwise).

    python benchmarks/interop.py runs/demo/qcfs --T 1,2,4,8,16

Rows: QCFS+IF and QCFS+GN (τ = L) of the run, on the full test split. Needs SpikingJelly
(`make integrations`). This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ann2snn import convert, export_nir, load, simulate
from ann2snn.checkpoint import RunRecord
from ann2snn.data import create_loaders
from ann2snn.deploy import to_spikingjelly
from ann2snn.evaluation import ann_accuracy
from ann2snn.report import environment, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (ann2snn train) of a QCFS/NQ network")
    p.add_argument("--T", default="1,2,4,8,16")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--out", default="benchmarks/results/cpu/interop.json")
    args = p.parse_args(argv)
    args.T = sorted({int(t) for t in args.T.split(",")})
    return args


def _stepped(step: Any, reset: Any, data: Any, steps: list[int]) -> dict[str, float]:
    """Accuracy after each of ``steps`` for a network run one step per call."""
    correct = dict.fromkeys(steps, 0)
    images = 0
    with torch.no_grad():
        for x, y in data:
            reset()
            total = 0
            for t in range(1, max(steps) + 1):
                total = total + step(x)
                if t in correct:
                    correct[t] += int((total.argmax(1) == y).sum())
            images += len(y)
    return {str(t): correct[t] / images for t in steps}


def _nir_reader(snn: Any, example: torch.Tensor) -> tuple[Any, Any]:
    """SpikingJelly's NIR importer on our file (dt = 1: one step per unit of time)."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    with tempfile.TemporaryDirectory() as tmp:
        export_nir(snn, Path(tmp) / "net.nir", example)
        net = import_from_nir(str(Path(tmp) / "net.nir"), dt=1.0)
    state: dict[str, Any] = {}

    def step(x: torch.Tensor) -> torch.Tensor:
        out, state["s"] = net(x, state["s"]) if "s" in state else net(x)
        return out

    return step, state.clear


def _sum_pool_readers(snn: Any, example: torch.Tensor, data: Any, steps: list[int]) -> dict:
    """sinabs and Norse on ``export_nir(..., profile="sum-pool")``: accuracy or the error."""
    import nir

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_nir(snn, Path(tmp) / "net.nir", example, profile="sum-pool")
        graph = nir.read(str(Path(tmp) / "net.nir"))
    for name, make in (("sinabs", _sinabs), ("norse", _norse)):
        try:
            step, reset = make(graph)
            out[f"{name} (sum-pool profile)"] = _stepped(step, reset, data, steps)
        except Exception as err:  # noqa: BLE001 - a reader's failure is the result
            out[f"{name} (sum-pool profile)"] = f"{type(err).__name__}: {str(err)[:200]}"
    return out


def _sinabs(graph: Any) -> tuple[Any, Any]:
    import sinabs

    state: dict[str, Any] = {}

    def step(x: torch.Tensor) -> torch.Tensor:  # one step: sinabs takes [B·T, ...], T = 1
        if "net" not in state:
            state["net"] = sinabs.from_nir(graph, batch_size=x.shape[0])
        out, _ = state["net"](x)
        return out

    return step, state.clear


def _norse(graph: Any) -> tuple[Any, Any]:
    import norse.torch as norse

    net, state = norse.from_nir(graph), {}

    def step(x: torch.Tensor) -> torch.Tensor:
        out, state["s"] = net(x, state.get("s"))
        return out

    return step, state.clear


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.run)
    record = RunRecord.of(model)
    loaders = create_loaders(record.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                             augment=False, device="cpu")  # fmt: skip
    example = next(iter(loaders.test))[0][:4]
    rows = []
    for neuron, options in (("if", {}), ("gn", {"tau": record.get("levels") or 4})):
        snn = convert(model, neuron, **options)
        ours = simulate(snn, loaders.test, max(args.T), progress=False)
        sj = to_spikingjelly(snn, example)
        row = {
            "neuron": neuron, **options,
            "ann2snn": {str(t): ours.accuracy[t - 1] for t in args.T},
            "spikingjelly (to_spikingjelly)": _stepped(sj, sj.reset, loaders.test, args.T),
        }  # fmt: skip
        if neuron == "if":
            step, reset = _nir_reader(snn, example)
            row["spikingjelly (import_from_nir, dt=1)"] = _stepped(step, reset, loaders.test,
                                                                    args.T)  # fmt: skip
            row.update(_sum_pool_readers(snn, example, loaders.test, args.T))
        rows.append(row)
        print(row, file=sys.stderr)
    results = {
        "benchmark": "interop",
        "command": "python benchmarks/interop.py " + shlex.join(argv),
        "run": args.run,
        "ann_accuracy": ann_accuracy(model, loaders.test),
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
            elif "(" in sim:  # a reader that could not run the file: its error
                lines.append(f"| {name} | {sim} | {acc} |" + " |" * (len(steps) - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
