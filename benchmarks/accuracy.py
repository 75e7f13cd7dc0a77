"""Accuracy table: ANN and SNN test accuracy at each T for every conversion method.

    python benchmarks/accuracy.py --dataset fashion-mnist --models vgg16,resnet20 --epochs 30

For each model four ANNs are trained with ONE recipe (same seed, epochs, lr, batch size,
weight decay, augmentation); only the activation differs:

* ``qcfs``  QCFS, L = --levels            -> rows QCFS+IF and QCFS+GN (τ = L)
* ``nq``    NoisyQCFS, σ re-estimated after every epoch (`nq_epoch_hook`) -> row NQ+IF
* ``clipq`` clip-quant, Q = --casc-levels -> row CASC (consistent IF + wake-sleep)
* ``relu``  plain ReLU                    -> row ReLU+IF, thresholds = 99.9th percentile
  of the activations on the validation split

IF/GN rows come from one simulation of max(T) steps (the network is causal, so the
running output after t steps is the t-step answer). CASC rows need one run per T
(T wake steps, then S sleep steps): the table reports wake steps, total = T + S.
Training uses ``resume=True`` in --runs-dir, so a killed run continues where it stopped,
and the JSON is rewritten (atomically) after every row, so a partial run leaves results.
This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ann2snn import convert, load, simulate
from ann2snn.calibration.noise import nq_epoch_hook
from ann2snn.data import create_loaders
from ann2snn.evaluation import ann_accuracy, evaluate_snn, evaluate_wake_sleep
from ann2snn.methods import METHODS as TABLE
from ann2snn.methods import needs_threshold_data, neuron_options
from ann2snn.report import environment, write_json
from ann2snn.training import TrainConfig, train

# The library's method table, plus the data-based ReLU baseline. Which trained ANN each row
# uses comes from the table: QCFS+IF and QCFS+GN share one network.
METHODS = ("qcfs", "nq", "casc", "gn", "relu")
ANN_OF = {name: method.act for name, method in TABLE.items()} | {"relu": "relu"}
NEURON_OF = {name: method.neuron for name, method in TABLE.items()} | {"relu": "if"}
# Settings that change the numbers: results of an earlier run are only merged if they match.
RECIPE_KEYS = ("dataset", "epochs", "levels", "casc_levels", "casc_sleep", "T", "batch_size",
               "lr", "seed", "limit_train", "limit_test", "nq_batches", "sleep_grid",
               "threshold_param", "threshold_decay", "nq_augment")  # fmt: skip


def _ints(text: str) -> list[int]:
    return sorted({int(t) for t in text.split(",") if t.strip()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, cifar10, cifar100")
    p.add_argument("--models", default="vgg16,resnet20")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--levels", type=int, default=4, help="L of QCFS/NQ (and τ of GN)")
    p.add_argument("--casc-levels", type=int, default=8, help="Q of the clip-quant ANN")
    p.add_argument("--casc-sleep", default="16", help="sleep steps S after the T wake steps, "
                   "or 'auto': the smallest loss-free S found by the sleep search")  # fmt: skip
    p.add_argument("--sleep-grid", default="0,1,2,4,8,16,32,64", help="S searched at T = Q")
    p.add_argument("--T", default="1,2,4,8,16,32,64", help="time steps reported")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="JSON path (default benchmarks/results/accuracy-<dataset>.json)")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int, help="also limits the validation split")
    p.add_argument("--runs-dir", default="runs/bench")
    p.add_argument("--nq-batches", type=int, help="NQ calibration batches (default: the library's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--compile",
        default="auto",
        help="torch.compile in training: auto (on CUDA), off, or a mode",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--threshold-param", choices=["log", "raw"], default="log",
                   help="QCFS/NQ: train log λ or λ itself (the papers)")  # fmt: skip
    p.add_argument("--threshold-decay", choices=["auto", "on", "off"], default="auto",
                   help="weight decay on λ (auto: on for raw λ, off for log λ)")  # fmt: skip
    p.add_argument("--nq-augment", action="store_true",
                   help="NQ: σ from augmented training batches instead of validation")  # fmt: skip
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.methods = [m for m in args.methods.split(",") if m]
    if unknown := set(args.methods) - set(METHODS):
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    args.T, args.sleep_grid = _ints(args.T), _ints(args.sleep_grid)
    if args.casc_sleep != "auto":
        args.casc_sleep = int(args.casc_sleep)
    args.out = args.out or f"benchmarks/results/accuracy-{args.dataset}.json"
    args.progress = not args.no_progress
    args.compile = False if args.compile == "off" else args.compile
    return args


def train_ann(args: argparse.Namespace, model_name: str, act: str) -> tuple[Any, dict]:
    """Train (or resume, or just reload) one ANN; returns the best checkpoint and facts."""
    levels = args.casc_levels if act == "clipq" else args.levels
    name = f"{args.dataset}-{model_name}-{act}-L{levels}-e{args.epochs}-s{args.seed}"
    name += f"-n{args.limit_train}" if args.limit_train else ""
    thresholds = {}
    if act in ("qcfs", "nq"):  # the ablation's settings; other activations have no λ
        decay = {"auto": None, "on": True, "off": False}[args.threshold_decay]
        thresholds = {"threshold_param": args.threshold_param, "threshold_decay": decay}
        name += "-raw" if args.threshold_param == "raw" else ""
        name += "" if decay is None else f"-wd{'on' if decay else 'off'}"
        name += "-aug" if act == "nq" and args.nq_augment else ""
    run_dir = Path(args.runs_dir) / name
    cfg = TrainConfig(
        model=model_name, dataset=args.dataset, data_dir=args.data_dir, act=act, levels=levels,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, out_dir=str(run_dir), limit_train=args.limit_train,
        limit_test=args.limit_test, progress=args.progress, resume=True, compile=args.compile,
        **thresholds,
    )  # fmt: skip
    hooks = {"on_epoch_end": _nq_hook(args.nq_batches, args.nq_augment)} if act == "nq" else None
    if torch.cuda.is_available():
        # `train` compiles on CUDA; four variants of one class in one process would pass
        # torch's limit of 8 graphs per function and silently run the later ones eager.
        torch._dynamo.reset()
    record = train(cfg, hooks=hooks)
    history = record["metrics"]["history"]
    times = [e["time_s"] for e in history]
    info: dict[str, Any] = {
        "act": act, "levels": levels, "run_dir": str(run_dir), "epochs": record["epoch"],
        "best_epoch": record["metrics"]["best_epoch"], "runtime": record.get("runtime"),
        # Wall time of each epoch: training + val/test evaluation + hook + checkpoint.
        "epoch_time_s": times, "mean_epoch_time_s": sum(times) / max(len(times), 1),
        "final_train_acc": history[-1]["train_acc"] if history else None,
    }  # fmt: skip
    if act == "nq":
        extra = record.get("extra", {})
        cal = extra.get("calibration_seconds_by_epoch", {})
        info["calibration_seconds_by_epoch"] = cal
        info["mean_calibration_s"] = sum(cal.values()) / len(cal) if cal else None
        info["sigma_final"] = extra.get("sigma")
        info["snn_val_acc_final"] = extra.get("snn_val_acc")
    return load(run_dir), info


def _nq_hook(max_batches: int | None, augment: bool = False):
    """`nq_epoch_hook` plus the calibration time of every epoch (the library's hook keeps
    only the latest); keyed by epoch so a resumed run cannot double-count."""
    batches = {} if max_batches is None else {"max_batches": max_batches}
    inner = nq_epoch_hook(steps=4, augment=augment, **batches)

    def on_epoch_end(model, epoch, loaders, record):
        out = dict(inner(model, epoch, loaders, record))
        by_epoch = dict(record["extra"].get("calibration_seconds_by_epoch", {}))
        by_epoch[str(epoch)] = out["calibration_seconds"]
        return {**out, "calibration_seconds_by_epoch": by_epoch}

    return on_epoch_end


def sleep_search(model, data, levels: int, grid: list[int], ann_acc: float, progress: bool):
    """Smallest S in ``grid`` from which on (that S and every larger one in the grid) the
    CIF SNN's accuracy at T = Q on ``data`` (the validation split: S is a selection, never
    made on the test set) equals the ANN's ``ann_acc`` on the same data: the sleep that makes
    it loss-free.

    One run of Q wake + max(grid) sleep steps: accuracy is recorded after every step, and
    sleep steps that follow cannot change what earlier steps output, so step Q + s of the
    long run is exactly the run with s sleep steps.
    """
    res = simulate(convert(model, "cif"), data, levels, sleep=max(grid), progress=progress)
    ann_correct = round(ann_acc * res.images)
    by_sleep = {str(s): res.accuracy[levels + s - 1] for s in grid}
    free = None
    for s in reversed(grid):  # equal counts of correct images = equal accuracy
        if round(by_sleep[str(s)] * res.images) != ann_correct:
            break
        free = s
    return {"T": levels, "grid": grid, "accuracy_by_sleep": by_sleep, "ann_accuracy": ann_acc,
            "loss_free_sleep": free}  # fmt: skip


def evaluate_model(args, model_name: str, loaders, device, entry: dict, save) -> None:
    """Train what the requested rows need, then fill ``entry`` row by row (saving each)."""
    test, steps, T_max = loaders.test, args.T, max(args.T)
    nets: dict[str, tuple[Any, dict]] = {}
    for method in args.methods:
        act = ANN_OF[method]
        if act not in nets:
            model, info = train_ann(args, model_name, act)
            nets[act] = (model.to(device), info)
            entry["training"][act] = info
        model, info = nets[act]
        ann_acc = ann_accuracy(model, test, device)
        t0 = time.perf_counter()
        neuron = NEURON_OF[method]
        kw = dict(T=T_max, progress=args.progress, **neuron_options(neuron, args.levels))
        row: dict[str, Any] = {"method": method, "ann": act, "ann_accuracy": ann_acc, "sleep": 0}
        if method == "qcfs":
            r = evaluate_snn(model, test, neuron, label=f"QCFS+IF (L={args.levels})", **kw)
        elif method == "gn":
            label = f"QCFS+GN (L={args.levels}, τ={args.levels})"
            r = evaluate_snn(model, test, neuron, label=label, **kw)
        elif method == "nq":
            r = evaluate_snn(model, test, neuron, label=f"NQ+IF (L={args.levels})", **kw)
            row["sigma"] = info.get("sigma_final")
        elif method == "relu":
            # The classic data-based baseline: each IF threshold = 99.9th percentile of
            # that layer's ReLU outputs on the validation split (never the test split).
            label = "ReLU+IF (99.9th pct)"
            data = loaders.val if needs_threshold_data(act) else None
            r = evaluate_snn(model, test, neuron, calibration=data, label=label, **kw)
        else:  # casc
            sel = loaders.val if loaders.val is not None and len(loaders.val) else test
            search = sleep_search(
                model,
                sel,
                args.casc_levels,
                args.sleep_grid,
                ann_accuracy(model, sel),
                args.progress,
            )
            search["split"] = "validation" if sel is not test else "test (no validation split)"
            entry["casc_sleep_search"] = search
            sleep = args.casc_sleep
            if sleep == "auto":  # the loss-free S, else the largest S tried
                sleep = search["loss_free_sleep"]
                sleep = max(args.sleep_grid) if sleep is None else sleep
            label = f"CASC (Q={args.casc_levels}, S={sleep})"
            r = evaluate_wake_sleep(
                model, test, steps, sleep, args.progress, label=label, neuron=neuron
            )
            row["sleep"] = sleep
            row["total_steps"] = {str(t): t + sleep for t in steps}
        row.update(label=r["label"], neuron=r["neuron"], convert=r.get("convert"))
        row["snn_accuracy"] = {str(t): r["accuracy_by_wake"][str(t)] for t in steps}
        row["eval_seconds"] = time.perf_counter() - t0
        entry["rows"][method] = row
        save()


def format_tables(results: dict) -> str:
    """Markdown: the accuracy table (all models), then training facts per model."""
    steps = results["settings"]["T"]
    head = ["model", "method", "ANN"] + [f"T={t}" for t in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    pct = lambda x: "—" if x is None else f"{100 * x:.2f}"  # noqa: E731
    for model_name, entry in results["models"].items():
        for m in METHODS:  # fixed row order whatever order the methods were run in
            if r := entry["rows"].get(m):
                cells = [model_name, r["label"], pct(r["ann_accuracy"])]
                lines.append("| " + " | ".join(cells + [pct(r["snn_accuracy"].get(str(t))) for t in steps]) + " |")  # fmt: skip
    lines += ["", "CASC columns are wake steps T; each is its own run of T wake + S sleep "
              "steps (total T + S).", "",  # fmt: skip
              "| model | ANN | epochs | s/epoch (train+eval+save) | NQ calib. s/epoch | loss-free CASC S (T=Q) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for model_name, entry in results["models"].items():
        s = entry.get("casc_sleep_search") or {}
        for act, info in entry["training"].items():
            cal = info.get("mean_calibration_s")
            free = s.get("loss_free_sleep", "—") if act == "clipq" and s else "—"
            free = "not reached" if free is None else free
            name = (
                act
                if act == "relu"
                else f"{act} ({'Q' if act == 'clipq' else 'L'}={info['levels']})"
            )
            lines.append(f"| {model_name} | {name} | {info['epochs']} | "
                         f"{info['mean_epoch_time_s']:.2f} | {'—' if cal is None else f'{cal:.2f}'} | {free} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:  # on a shared machine fewer threads than cores avoids OpenMP thrashing
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    settings = {k: getattr(args, k) for k in RECIPE_KEYS}
    results: dict[str, Any] = {
        "benchmark": "accuracy",
        "command": "python benchmarks/accuracy.py " + shlex.join(argv),
        "settings": settings | {"models": args.models, "methods": args.methods},
        "environment": environment() | {"device": str(device)},
        "models": {},
    }
    out = Path(args.out)
    if out.exists():  # keep other models/methods of an earlier run with the same recipe
        old = json.loads(out.read_text())
        if {k: old.get("settings", {}).get(k) for k in RECIPE_KEYS} == settings:
            results["models"] = old.get("models", {})

    def save() -> None:
        results["table"] = format_tables(results)
        write_json(results, out)

    loaders = create_loaders(
        args.dataset, data_dir=args.data_dir, batch_size=args.eval_batch_size, seed=args.seed,
        device=device, limit_train=args.limit_train, limit_test=args.limit_test,
    )  # fmt: skip
    for model_name in args.models:
        entry = results["models"].setdefault(model_name, {})
        entry.setdefault("rows", {})
        entry.setdefault("training", {})
        evaluate_model(args, model_name, loaders, device, entry, save)
    save()
    print(results["table"])
    print(f"\nresults: {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
