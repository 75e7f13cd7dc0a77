"""Closing the T ≤ 2 gap: calibration methods and a short spiking fine-tune, per T.

    python benchmarks/calibration.py runs/demo/qcfs --T 1,2,4 --batches 8

For every checkpoint (a run folder written by `ann2snn train`): the ANN's test accuracy,
the IF SNN's at each T as converted, and for each variant the SNN at T on the full test
split: ``bias``, ``potential`` (per neuron), ``potential-channel``, ``cos``
(`ann2snn.calibrate`; the first three on ``--batches`` validation batches, COS with
``--rho`` pre-simulation steps per layer and no data), ``finetune`` (`ann2snn.finetune`
at that T for ``--ft-epochs`` of the training split), ``finetune+potential``, and the
control ``ann-extra``: the ANN trained with the same optimizer on the same batches, then
converted (what the extra training alone buys). Every variant's cost is given in seconds
and as a fraction of the run's mean epoch time from its record, with its total time
steps (COS: T + layers·ρ). ReLU-trained networks get θ = 99.9th percentile on the
validation split first (as ``ann2snn eval`` does). This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ann2snn import activity, calibrate, convert, finetune, load, simulate
from ann2snn.calibration import CalibrationLog
from ann2snn.data import create_loaders
from ann2snn.evaluation import ann_accuracy
from ann2snn.report import environment, plot_cost, write_json
from ann2snn.simulation.schedule import presim_steps
from ann2snn.training import FinetuneLog


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (ann2snn train)")
    p.add_argument("--T", default="1,2,4")
    p.add_argument("--methods", default=",".join(VARIANTS))
    p.add_argument("--batches", type=int, default=8, help="validation batches per calibration")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir", help="where the dataset lives (default: the usual places)")
    p.add_argument(
        "--rounds", type=int, default=1, help="potential: repeat the pass (calibrate rounds=)"
    )
    p.add_argument("--activity-batches", type=int, default=4,
                   help="test batches the energy ratio is counted on (0: none)")  # fmt: skip
    p.add_argument("--plot", help="write accuracy against energy for every variant here (PNG)")
    p.add_argument("--rho", type=int, help="cos: pre-simulation steps per layer (default 4)")
    p.add_argument("--ft-epochs", type=float, default=1.0, help="finetune: epochs (a share)")
    p.add_argument("--ft-lr", type=float, default=2e-3, help="finetune: SGD learning rate")
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
    entry["plain_energy"] = {
        str(t): e["energy_ratio"] for t in args.T if (e := _energy(snn, loaders.test, t, args))
    }
    for method in args.methods:
        for t in args.T:
            start = time.perf_counter()
            fixed, info = _variant(method, model, snn, loaders, t, args)
            seconds = time.perf_counter() - start
            res = simulate(fixed, loaders.test, t, progress=False)
            entry["methods"][method][str(t)] = {
                "accuracy": res.accuracy[-1], "seconds": seconds,
                "fraction_of_epoch": seconds / epoch_s if epoch_s else None,
                "total_steps": t + info.pop("presim_steps", 0), **info,
                **_energy(fixed, loaders.test, t, args),
            }  # fmt: skip
            print(f"{run} {method} T={t}: {100 * res.accuracy[-1]:.2f} ({seconds:.1f} s)",
                  file=sys.stderr)  # fmt: skip
    return entry


def _energy(net: Any, data: Any, t: int, args: Any) -> dict[str, Any]:
    """E_SNN / E_ANN per image on the first ``--activity-batches`` test batches (COS with
    ρ > T runs ρ steps per layer, which `activity` does not count: left out)."""
    if not args.activity_batches or presim_steps(net) > t:
        return {}
    report = activity(net, data, t, max_batches=args.activity_batches)
    return {"energy_ratio": report.energy()["ratio"][-1], "synops": report.synops[-1]}


VARIANTS = ("bias", "potential", "potential-channel", "cos", "finetune",
            "finetune+potential", "ann-extra")  # fmt: skip


def _variant(name: str, model: Any, snn: Any, loaders: Any, t: int, args: Any) -> tuple:
    """The network of one variant at ``t`` steps, and what it cost besides seconds."""
    cal = dict(batches=args.batches, guard=not args.no_guard)
    if name in ("bias", "potential", "potential-channel"):
        log = CalibrationLog(name, t)
        extra = {"granularity": "channel"} if name == "potential-channel" else {}
        rounds = {"rounds": args.rounds} if name.startswith("potential") else {}
        method = name.split("-")[0]
        net = calibrate(snn, loaders.val, t, method, log=log, **cal, **extra, **rounds)
        kept = sum(1 for v in log.layers.values() if v.get("kept"))
        return net, {"images": log.images, "layers_kept": kept, "layers": len(log.layers)}
    if name == "cos":
        net = calibrate(snn, None, t, "cos", rho=args.rho)
        return net, {"presim_steps": net.config["calibration"]["presim_steps"], "rho": args.rho}
    if name.startswith("finetune"):
        log = FinetuneLog(t)
        net = finetune(snn, loaders.train, t, epochs=args.ft_epochs, lr=args.ft_lr, log=log)
        if name == "finetune+potential":
            net = calibrate(net, loaders.val, t, "potential", **cal)
        return net, {"images": log.images, "first_loss": log.losses[0], "last_loss": log.losses[-1]}
    if name == "ann-extra":
        ann = _train_ann(model, loaders.train, args)
        return convert(ann, "if"), {"ann_accuracy": ann_accuracy(ann, loaders.test)}
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def _train_ann(model: Any, data: Any, args: Any) -> Any:
    """The control: the ANN itself, the same SGD on the same number of batches as
    `finetune` (BatchNorm frozen as there)."""
    import copy
    import math

    ann = copy.deepcopy(model).eval()
    opt = torch.optim.SGD(ann.parameters(), lr=args.ft_lr, momentum=0.9)
    total, done = max(1, math.ceil(args.ft_epochs * len(data))), 0
    while done < total:
        for x, y in data:
            loss = torch.nn.functional.cross_entropy(ann(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= total:
                break
    return ann.eval()


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
            accs = [f"{100 * got[str(t)]['accuracy']:.2f}" + (
                f" ({got[str(t)]['total_steps']} steps)" if got[str(t)]["total_steps"] != t else ""
            ) for t in steps]  # fmt: skip
            lines.append("| " + " | ".join(["", "", m] + accs + [sec, frac]) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], args: Any, path: Path) -> None:
    """Accuracy against energy, one line per variant over the T of the run (the first run's
    rows; through `ann2snn.report.plot_cost`, the plot `eval --activity` draws)."""
    import shutil
    import tempfile

    r = rows[0]
    lines = [{"label": "none (as converted)", "ann_accuracy": r["ann_accuracy"],
              "accuracy_by_wake": r["plain"], "energy_ratio_by_wake": r.get("plain_energy", {}),
              "layer_firing_rates": {}}]  # fmt: skip
    for name, by_t in r["methods"].items():
        if all("energy_ratio" in v for v in by_t.values()):
            lines.append({"label": name, "layer_firing_rates": {},
                          "accuracy_by_wake": {t: v["accuracy"] for t, v in by_t.items()},
                          "energy_ratio_by_wake": {t: v["energy_ratio"] for t, v in by_t.items()}})  # fmt: skip
    lines = [line for line in lines if line["energy_ratio_by_wake"]]
    with tempfile.TemporaryDirectory() as tmp:
        paths = plot_cost(
            lines, tmp, title=f"{r['model']} on Fashion-MNIST, T = {', '.join(map(str, args.T))}"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths["energy_plot"], path)


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
    if args.plot:
        _plot(results["rows"], args, Path(args.plot))
    print(results.get("table", ""))
    return results


if __name__ == "__main__":
    main()
