"""Where a training step's time goes, per pipeline variant: wall time per step and, from
the torch profiler, busy time of the device (GPU kernels, or CPU operators on a CPU), the
kernels launched per step and the most expensive operators.

    python benchmarks/profile_step.py --device cuda --models vgg16 --acts relu,qcfs \
        --variants library,reduce-overhead,eager-fp32

busy / wall ≪ 1 means the step waits on Python and kernel launches (what CUDA graphs,
``--variants reduce-overhead``, remove); busy ≈ wall means the kernels themselves cost.

Variants:
  library       the pipeline `ann2snn.train` uses on that device (TrainConfig defaults:
                autocast, channels_last and torch.compile as resolved for the device)
  <mode>        the same with TrainConfig.compile = <mode> (off, default, reduce-overhead,
                max-autotune, max-autotune-no-cudagraphs)
  eager-fp32    no autocast, no channels_last, no compile (the e baseline's setup)

Every variant trains a fresh model (same initial weights) through `train_one_epoch` on the
same fixed batches of the library's training loader. Never imported by the package.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import ann2snn.training as T  # noqa: E402
from ann2snn import create_model
from ann2snn.data import DatasetNotFoundError, create_loaders
from ann2snn.report import environment, write_json


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="vgg16")
    p.add_argument("--acts", default="relu,qcfs")
    p.add_argument("--variants", default="library,eager-fp32")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--profile-steps", type=int, default=10, help="steps under the profiler (0: none)"
    )
    p.add_argument("--top", type=int, default=8, help="operators listed per variant")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="benchmarks/results/profile-step.json")
    args = p.parse_args(argv)
    args.models, args.acts = args.models.split(","), args.acts.split(",")
    args.variants = args.variants.split(",")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(auto if args.device == "auto" else args.device)
    return args


def batches(args) -> tuple[list, tuple[int, int, int]]:
    """``--steps`` full batches of the library's training loader (random images of the
    Fashion-MNIST shape if the dataset is missing: time does not depend on pixel values)."""
    try:
        loaders = create_loaders(args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                                 device=args.device, limit_train=args.batch_size * (args.steps + 1))  # fmt: skip
        full = (b for b in loaders.train if len(b[1]) == args.batch_size)
        shape = (loaders.in_channels, loaders.image_size, loaders.num_classes)
        return list(itertools.islice(full, args.steps)), shape
    except DatasetNotFoundError:
        print("dataset not found: random images of the Fashion-MNIST shape", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        make = lambda: (torch.randn(args.batch_size, 1, 28, 28, generator=g).to(args.device),  # noqa: E731
                        torch.randint(0, 10, (args.batch_size,), generator=g).to(args.device))  # fmt: skip
        return [make() for _ in range(args.steps)], (1, 28, 10)


def build(args, name: str, act: str, variant: str, shape: tuple[int, int, int]):
    """A fresh model and an epoch function over a list of batches, as `train` sets it up."""
    channels, side, classes = shape
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=channels, act=act,
                         levels=8 if act == "clipq" else 4, image_size=side)  # fmt: skip
    kw: dict[str, Any] = dict(
        model=name, dataset=args.dataset, device=str(args.device), progress=False
    )
    if variant == "eager-fp32":
        kw |= dict(amp="off", channels_last=False, compile=False)
    elif variant != "library":
        kw["compile"] = {"off": False}.get(variant, variant)
    setup = T.prepare_training(model, T.TrainConfig(**kw, lr=0.01))  # as `train` sets it up
    return setup.epoch, setup.runtime()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, epoch, data: list) -> dict[str, Any]:
    dev = args.device
    sync(dev)
    t0 = time.perf_counter()
    epoch(data[:3])  # compilation, cuDNN plans, allocator growth
    epoch(data[:3])
    sync(dev)
    row: dict[str, Any] = {"warmup_s": time.perf_counter() - t0, "wall_ms_per_step": []}
    for _ in range(args.repeats):
        sync(dev)
        t0 = time.perf_counter()
        epoch(data)
        sync(dev)
        row["wall_ms_per_step"].append((time.perf_counter() - t0) / len(data) * 1e3)
    row["wall_ms"] = statistics.median(row["wall_ms_per_step"])
    if args.profile_steps:
        row |= profile(args, epoch, data[: args.profile_steps])
    return row


def profile(args, epoch, data: list) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = args.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        epoch(data)
        sync(args.device)
    n, events = len(data), prof.key_averages()
    if cuda:  # device-side events: kernels and copies
        events = [e for e in events if e.device_type.name == "CUDA"]
        self_us = lambda e: e.self_device_time_total  # noqa: E731
    else:  # CPU operators (aten::*), without the profiler's wrapper ranges
        events = [e for e in events if e.key.startswith("aten::")]
        self_us = lambda e: e.self_cpu_time_total  # noqa: E731
    top = sorted(events, key=self_us, reverse=True)[: args.top]
    return {
        "busy_ms": sum(self_us(e) for e in events) / n / 1e3,
        "kernels_per_step" if cuda else "ops_per_step": sum(e.count for e in events) / n,
        "top": [
            {"op": e.key[:80], "ms_per_step": self_us(e) / n / 1e3, "calls_per_step": e.count / n}
            for e in top
        ],  # fmt: skip
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| model | act | variant | pipeline | wall ms/step | busy ms/step | busy/wall | launches/step |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        busy = r.get("busy_ms")
        launches = r.get("kernels_per_step", r.get("ops_per_step"))
        p = r["pipeline"]
        pipe = f"amp {p['amp']}, {'cl' if p['channels_last'] else 'nchw'}, compile {p['compile']}"
        lines.append(f"| {r['model']} | {r['act']} | {r['variant']} | {pipe} | {r['wall_ms']:.2f} | "
                     + (f"{busy:.2f} | {busy / r['wall_ms']:.2f} | {launches:.0f} |" if busy else "— | — | — |"))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        dyn = torch._dynamo.config  # several variants of one model class are compiled
        limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, limit, max(64, getattr(dyn, limit)))
    data, shape = batches(args)
    results: dict[str, Any] = {"benchmark": "profile_step",
                               "command": "python benchmarks/profile_step.py " + shlex.join(argv),
                               "environment": environment() | {"device": str(args.device)},
                               "batch_size": args.batch_size, "steps": len(data), "rows": []}  # fmt: skip
    for name, act, variant in itertools.product(args.models, args.acts, args.variants):
        torch._dynamo.reset()
        epoch, pipeline = build(args, name, act, variant, shape)
        row = {"model": name, "act": act, "variant": variant, "pipeline": pipeline}
        results["rows"].append(row | measure(args, epoch, data))
        results["table"] = format_table(results["rows"])
        write_json(results, Path(args.out))  # after every row: a cut-off run keeps its rows
        print(results["table"].splitlines()[-1], flush=True)
    print("\n" + results["table"])
    return results


if __name__ == "__main__":
    main()
