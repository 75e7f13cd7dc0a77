"""What a converted network keeps through NIR: accuracy in ann2snn, after our NIR round
trip, and as a plain NIR reader executes the file.

    python benchmarks/nir_readers.py runs/demo/qcfs --T 4,8,16

For a trained run: the IF SNN's test accuracy at each T (as converted), the accuracy of
``import_nir(export_nir(snn))`` (the round trip: metadata honoured), and of
``import_nir(path, metadata=False)`` — the file run as NIR's IF is specified (reset to
v_reset = 0, v(0) = 0), which is what readers without ann2snn's metadata execute.
External readers (snnTorch, sinabs) are tried when installed and reported with the error
they raise when they cannot run the file. This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ann2snn import convert, export_nir, import_nir, load, simulate
from ann2snn.data import create_loaders
from ann2snn.evaluation import ann_accuracy
from ann2snn.report import environment, write_json


def _external(path: Path, loaders, steps: list[int]) -> dict[str, Any]:
    """snnTorch's and sinabs's NIR import, when installed (accuracy at each T, or the error)."""
    import nir

    out: dict[str, Any] = {}
    graph = nir.read(str(path))
    for name, load_fn in (("snntorch", _snntorch), ("sinabs", _sinabs)):
        try:
            net = load_fn(graph)
        except ImportError:
            out[name] = {"status": "not installed"}
            continue
        except Exception as e:  # noqa: BLE001 - a reader's failure is the result
            out[name] = {"status": f"cannot load: {type(e).__name__}: {e}"[:300]}
            continue
        try:
            out[name] = {"status": "ran", "accuracy": _run_stateful(net, loaders.test, steps)}
        except Exception as e:  # noqa: BLE001
            out[name] = {"status": f"cannot run: {type(e).__name__}: {e}"[:300]}
    return out


def _snntorch(graph):
    from snntorch.import_nir import import_from_nir

    return import_from_nir(graph)


def _sinabs(graph):
    from sinabs import from_nir

    return from_nir(graph, batch_size=256)


def _run_stateful(net, data, steps):
    correct = {t: 0 for t in steps}
    n = 0
    for x, y in data:
        total, state = 0, None
        for t in range(1, max(steps) + 1):
            o = net(x) if state is None else net(x, state)
            if isinstance(o, tuple):
                o, state = o
            total = total + o
            if t in correct:
                correct[t] += int((total.argmax(-1) == y).sum())
        n += len(y)
    return {str(t): c / n for t, c in correct.items()}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--T", default="4,8,16")
    p.add_argument("--data-dir")
    p.add_argument("--limit-test", type=int)
    p.add_argument("--out", default="benchmarks/results/cpu/nir-readers.json")
    args = p.parse_args(argv)
    steps = sorted({int(t) for t in args.T.split(",")})
    model = load(args.run)
    record = model.ann2snn_record
    loaders = create_loaders(record["recipe"]["dataset"], data_dir=args.data_dir, batch_size=256,
                             augment=False, limit_test=args.limit_test)  # fmt: skip
    dev = torch.device("cpu")
    snn = convert(model, "if")
    x, _ = next(iter(loaders.test))
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.nir"
        losses = export_nir(snn, path, x[:2])
        for label, net in (("ann2snn", snn), ("NIR round trip (ann2snn metadata)", import_nir(path)),
                           ("NIR as specified (reset to 0, v(0) = 0)", import_nir(path, metadata=False))):  # fmt: skip
            res = simulate(net, loaders.test, max(steps), progress=False)
            rows[label] = {str(t): res.accuracy[t - 1] for t in steps}
        external = _external(path, loaders, steps)
    result = {
        "benchmark": "nir-readers",
        "command": "python benchmarks/nir_readers.py " + shlex.join(argv),
        "run": args.run, "ann_accuracy": ann_accuracy(model, loaders.test, dev), "T": steps,
        "rows": rows, "external": external, "reader_losses": losses, "environment": environment(),
    }  # fmt: skip
    head = ["reader", "ANN"] + [f"T={t}" for t in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, acc in rows.items():
        cells = [label, f"{100 * result['ann_accuracy']:.2f}"] + [f"{100 * acc[str(t)]:.2f}" for t in steps]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for name, got in external.items():
        accs = [f"{100 * got['accuracy'][str(t)]:.2f}" for t in steps] if "accuracy" in got else [got["status"]] + [""] * (len(steps) - 1)  # fmt: skip
        lines.append("| " + " | ".join([name, ""] + accs) + " |")
    result["table"] = "\n".join(lines)
    write_json(result, Path(args.out))
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
