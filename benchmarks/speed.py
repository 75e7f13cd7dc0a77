"""Speed ratios of the library. Each ratio's numerator and denominator are timed back to
back in one process (same device, batch and precision); medians of several repeats.

    python benchmarks/speed.py --device cuda --models vgg16,resnet20        # GPU table
    python benchmarks/speed.py --reduced --threads 1                         # CPU smoke run

a. training epoch of a QCFS / NQ / clip-quant model ÷ the same model with ReLU, both via
   `train_one_epoch` on one fixed in-memory loader, with the pipeline `train` uses on that
   device (autocast, channels_last, torch.compile, fused SGD: read from the library) ≤ 1.15
b. SNN simulation image-steps/s (`simulate`) ÷ ANN forward images/s (``model(x)``), same
   model, batch and precision, per neuron (if, gn, cif), in fp32 and bf16           ≥ 0.95
c. NQ σ calibration (`calibrate_noise` with `nq_epoch_hook`'s defaults) on the validation
   split ÷ one training epoch on the training split                                 ≤ 0.15
d. `make demo` wall time on 2 cores: from --demo-log / --demo-seconds, or --run-demo
e. library training epoch (`train_one_epoch` on `create_loaders`' on-device loader) ÷ the
   same epoch in a plain eager loop: fp32, `create_model`'s nn.Module, torch.optim.SGD,
   the split pre-loaded on the device as float tensors, no autocast/compile         ≤ 0.33

All ratios use the library's training loader (a and b its first --batches batches): the
real split, or random images of the same size and memory layout (--data synthetic; speed
does not depend on pixel values, but it does on layout). Warm-up calls (allocator growth,
cuDNN plans, torch.compile) are timed apart and never enter a ratio. Rows of an earlier
run in --out with other (ratio, model) keys are kept, so the table can be built up in
several invocations (each row records its command). Never imported by the package.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The training module (its helpers, beside the exported `train` function).
import ann2snn.training as T  # noqa: E402
from ann2snn import NoisyQCFS, calibrate_noise, convert, create_model, simulate
from ann2snn.calibration.noise import nq_epoch_hook
from ann2snn.data import DatasetNotFoundError, create_loaders
from ann2snn.data.images import InMemoryLoader
from ann2snn.methods import neuron_options
from ann2snn.report import environment, write_json
from ann2snn.simulation import default_max_fold

NQ_SIGMA = 0.25  # a: every NQ layer trains with this noise σ (typical calibrated values 0.1–0.5)
TARGETS = {"a": ("<=", 1.15), "b": (">=", 0.95), "c": ("<=", 0.15), "e": ("<=", 0.33)}
# name -> (channels, side, classes, train images after the 10% val split, val images)
SHAPES = {"fashion-mnist": (1, 28, 10, 54000, 6000), "cifar10": (3, 32, 10, 45000, 5000),
          "cifar100": (3, 32, 100, 45000, 5000)}  # fmt: skip
# --reduced: a CPU smoke run (val:train kept at 1:9, as in the full split, so c keeps its meaning).
REDUCED = dict(models="cnn", batches=3, repeats=3, sim_T=4, limit_train=900, limit_test=100)
FULL = dict(models="vgg16,resnet20", batches=40, repeats=5, sim_T=8, limit_train=None, limit_test=None)  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", help="default vgg16,resnet20 (cnn with --reduced)")
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(SHAPES))
    p.add_argument("--data-dir")
    p.add_argument("--data", default="auto", choices=["auto", "real", "synthetic"],
                   help="c/e data: auto = the real split if found, else random")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, help="batches of the fixed loader (a, b); default 40")
    p.add_argument("--repeats", type=int, help="timed repeats, median taken; default 5")
    p.add_argument("--sim-T", type=int, help="simulation steps for b; default 8")
    p.add_argument("--max-fold", help="b: simulate(max_fold=), or several (e.g. 128,2048) timed "
                   "side by side; default the library's")  # fmt: skip
    p.add_argument("--precisions", default="fp32,bf16", help="b: layer precisions to time")
    p.add_argument("--neuron-kernels", default="eager,compiled",
                   help="b: neuron steps as eager ops and/or torch.compile'd (convert(compiled=True))")  # fmt: skip
    p.add_argument("--compile", default="auto",
                   help="a, c, e: the library pipeline's torch.compile mode (TrainConfig.compile: "
                        "auto, off, default, reduce-overhead, ...)")  # fmt: skip
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--casc-levels", type=int, default=8)
    p.add_argument("--limit-train", type=int, help="c/e: training images (default: all)")
    p.add_argument("--limit-test", type=int, help="c/e: validation images (default: all)")
    p.add_argument("--only", default="a,b,c,e", help="which of a,b,c,e to measure")
    p.add_argument("--reduced", action="store_true", help=f"CPU-friendly sizes: {REDUCED}")
    p.add_argument("--demo-log", help="d: a log of `make demo` (its 'wall time: X s' line)")
    p.add_argument("--demo-seconds", type=float, help="d: a measured `make demo` wall time")
    p.add_argument("--run-demo", action="store_true", help="d: run `ann2snn demo` on 2 cores")
    p.add_argument("--demo-args", default="", help="extra arguments for --run-demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/speed-<device>.json)")
    args = p.parse_args(argv)
    for k, v in (REDUCED if args.reduced else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.models, args.only = [m for m in args.models.split(",") if m], args.only.split(",")
    args.precisions = args.precisions.split(",")
    args.neuron_kernels = args.neuron_kernels.split(",")
    if not set(args.neuron_kernels) <= {"eager", "compiled"}:
        p.error(f"--neuron-kernels takes eager and/or compiled, got {args.neuron_kernels}")
    args.max_fold = [int(f) for f in args.max_fold.split(",")] if args.max_fold else None
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(auto if args.device == "auto" else args.device)
    args.out = args.out or f"benchmarks/results/speed-{args.device.type}.json"
    return args


def timed(fn, device: torch.device) -> float:
    """Seconds of one call; the CUDA queue is drained before and after, so asynchronous
    work is charged to the call that launched it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def compare(fns: dict, device, repeats: int, warmup: dict | None = None, min_s: float = 0.2):
    """Median seconds per call of each function, and all timings. Each repeat runs all of
    them back to back in an order rotated per repeat, so drift (clocks, other load) hits
    each alike. A sample of a short function times several calls (at least ``min_s`` in
    all, as timeit does): a single call of a few ms is mostly timer and scheduler noise."""
    raw: dict[str, list[float]] = {}
    calls = {}
    for k in fns:  # twice: the first call may compile; the second shows the real cost
        raw[f"warmup_{k}"] = [timed((warmup or fns)[k], device) for _ in range(2)]
        w = raw[f"warmup_{k}"][1]
        # A separate (shorter) warm-up is given for whole epochs: one call per sample.
        calls[k] = 1 if warmup else max(1, math.ceil(min_s / max(w, 1e-9)))
    for r in range(repeats):
        for k in list(fns)[r % len(fns) :] + list(fns)[: r % len(fns)]:
            f, n = fns[k], calls[k]
            raw.setdefault(k, []).append(timed(lambda f=f, n=n: [f() for _ in range(n)], device) / n)  # fmt: skip
    raw |= {f"calls_per_sample_{k}": [n] for k, n in calls.items()}
    return {k: statistics.median(raw[k]) for k in fns}, raw


def build(args, name: str, act: str, device, train: bool = True):
    """A fresh model (same initial weights for every act) and, for training, an epoch
    function set up exactly as `ann2snn.train` sets up its run on ``device``."""
    channels, side, classes, *_ = SHAPES[args.dataset]
    torch.manual_seed(args.seed)
    levels = args.casc_levels if act == "clipq" else args.levels
    model = create_model(name, num_classes=classes, in_channels=channels, act=act,
                         levels=levels, image_size=side).to(device)  # fmt: skip
    if act == "nq":
        # σ as after calibration (a fresh model has σ = 0, where the CPU path draws no
        # noise at all): the ratio must include the per-element Gaussian draw.
        for m in model.modules():
            if isinstance(m, NoisyQCFS):
                m.sigma.fill_(NQ_SIGMA)
    # The library's own resolution of amp="auto", channels_last="auto", compile="auto".
    cfg = T.TrainConfig(model=name, dataset=args.dataset, device=str(device), progress=False,
                        lr=0.01, momentum=0.9, weight_decay=5e-4,
                        compile={"on": True, "off": False}.get(args.compile, args.compile))  # fmt: skip
    if not train:
        if T.Placement.resolve(
            cfg
        ).channels_last:  # as `train` trains it and `ann2snn.load` returns it
            model = model.to(memory_format=torch.channels_last)
        return model.eval(), None
    setup = T.prepare_training(model, cfg)  # exactly `train`'s device, layout, SGD, compile
    setup.model.pipeline = setup.runtime()
    return setup.model, setup.epoch


def fixed_batches(args, loaders) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first --batches full batches of the training loader, held as a list. Taken from
    the library's loader, not made up, because their memory layout matters: e.g. a
    1-channel batch whose channel stride is 1 sends CPU convolutions to channels_last."""
    full = (b for b in loaders.train if len(b[1]) == args.batch_size)
    if not (batches := list(itertools.islice(full, args.batches))):
        raise SystemExit(f"a and b need a training split of at least {args.batch_size} images")
    return batches


def warm_batches(batches: list) -> list:
    # First two and the last batch: the last is usually partial, a new shape that
    # torch.compile specialises for; that must happen here, not in a timed epoch.
    return batches[:2] + batches[-1:]


def ratio_a(args, name: str, device, loaders, rows: list) -> None:
    data, fns, pipeline = fixed_batches(args, loaders), {}, None
    for act in ("relu", "qcfs", "nq", "clipq"):
        model, epoch = build(args, name, act, device)
        fns[act], pipeline = (lambda e=epoch: e(data)), model.pipeline
    med, raw = compare(fns, device, args.repeats)
    for act in ("qcfs", "nq", "clipq"):
        rows.append(dict(id="a", model=name, what=f"train epoch {act} / relu", pipeline=pipeline,
                         value=med[act] / med["relu"], images=len(data) * args.batch_size,
                         seconds={k: v for k, v in raw.items() if k.endswith((act, "relu"))}))  # fmt: skip


def ratio_b(args, name: str, device, loaders, rows: list) -> None:
    data, steps = fixed_batches(args, loaders), args.sim_T
    images = len(data) * args.batch_size
    # Several --max-fold values are timed side by side in one comparison (one row each).
    folds = args.max_fold or [default_max_fold(device)]
    for act, neurons in (("qcfs", ("if", "gn")), ("clipq", ("cif",))):
        model, _ = build(args, name, act, device, train=False)
        for prec in args.precisions:
            dtype = {"fp32": None, "bf16": torch.bfloat16}[prec]

            @torch.no_grad()
            def ann(model=model, dtype=dtype):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    for x, _ in data:
                        model(x)

            fns = {"ann": ann}
            variants = list(itertools.product(neurons, folds, args.neuron_kernels))
            for neuron, fold, kern in variants:
                opts = neuron_options(neuron, args.levels)
                snn = convert(model, neuron, compiled=kern == "compiled", **opts)
                fns[f"{neuron}@{fold}/{kern}"] = lambda s=snn, d=dtype, f=fold: simulate(
                    s, data, steps, dtype=d, progress=False, max_fold=f)  # fmt: skip
            med, raw = compare(fns, device, args.repeats)
            ann_rate = images / med["ann"]
            for neuron, fold, kern in variants:
                key = f"{neuron}@{fold}/{kern}"
                snn_rate = images * steps / med[key]
                what = (
                    f"{neuron} sim / ANN fwd, {prec}"
                    + (f", max_fold {fold}" if len(folds) > 1 else "")
                    + (", compiled neuron" if kern == "compiled" else "")
                )
                rows.append(dict(id="b", model=name, what=what, value=snn_rate / ann_rate,
                                 snn_image_steps_per_s=snn_rate, ann_images_per_s=ann_rate, T=steps,
                                 images=images, max_fold=fold, neuron_kernel=kern,
                                 seconds={k: v for k, v in raw.items() if k.endswith((key, "ann"))}))  # fmt: skip


def loaders_for(args, device) -> tuple[Any, str]:
    """Train/val loaders for c and e: the real split, or random uint8 images of its size
    through the library's own `InMemoryLoader` (same augmentation, same cost)."""
    kw = dict(batch_size=args.batch_size, device=device, limit_train=args.limit_train,
              limit_test=args.limit_test)  # fmt: skip
    if args.data != "synthetic":
        try:
            return create_loaders(args.dataset, data_dir=args.data_dir, **kw), "real"
        except DatasetNotFoundError:
            if args.data == "real":
                raise
    channels, side, classes, n_train, n_val = SHAPES[args.dataset]
    g, pad = torch.Generator().manual_seed(args.seed), 2 if args.dataset == "fashion-mnist" else 4

    def split(n: int, train: bool) -> InMemoryLoader:
        x = torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)
        x = x.numpy()[:, 0, None] if channels == 1 else x.numpy()  # as `create_loaders` does:
        x = torch.from_numpy(x[np.arange(n)])  # same strides, so the same memory layout
        y = torch.randint(0, classes, (n,), generator=g)
        return InMemoryLoader(x, y, ((0.5,) * channels, (0.25,) * channels), args.batch_size,
                              shuffle=train, pad=pad if train else 0, seed=args.seed, device=device)  # fmt: skip

    n_train, n_val = min(n_train, args.limit_train or n_train), min(n_val, args.limit_test or n_val)
    return argparse.Namespace(train=split(n_train, True), val=split(n_val, False)), "synthetic"


def ratio_c(args, name: str, device, loaders, rows: list) -> None:
    model, epoch = build(args, name, "nq", device)
    # The default the training hook uses (None = the whole validation split).
    max_batches = inspect.signature(nq_epoch_hook).parameters["max_batches"].default
    fns = {"epoch": lambda: epoch(loaders.train),
           "calibration": lambda: calibrate_noise(model, loaders.val, steps=4, max_batches=max_batches)}  # fmt: skip
    warm = {"epoch": lambda: epoch(warm_batches(list(loaders.train))),
            "calibration": lambda: calibrate_noise(model, loaders.val, steps=4, max_batches=1)}  # fmt: skip
    med, raw = compare(fns, device, args.repeats, warmup=warm)
    rows.append(dict(id="c", model=name, what="NQ calibration / train epoch", seconds=raw,
                     value=med["calibration"] / med["epoch"], pipeline=model.pipeline,
                     train_images=loaders.train.dataset_size, val_images=loaders.val.dataset_size,
                     max_batches=max_batches))  # fmt: skip


def ratio_e(args, name: str, device, loaders, rows: list) -> None:
    model, epoch = build(args, name, "qcfs", device)
    # The baseline: the split materialised once as float tensors on the device, then the
    # loop everybody writes first. fp32, contiguous, plain SGD, no autocast, no compile.
    xs, ys = zip(*loaders.train)
    x_all, y_all = torch.cat(xs).contiguous(), torch.cat(ys)
    base, _ = build(args, name, "qcfs", device, train=False)
    base = base.to(memory_format=torch.contiguous_format)  # the plain loop: NCHW
    base.train()
    base_opt = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def eager_epoch(limit: int | None = None) -> None:
        perm = torch.randperm(len(y_all), device=device)[:limit]
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = F.cross_entropy(base(x_all[idx]), y_all[idx])
            base_opt.zero_grad()
            loss.backward()
            base_opt.step()

    fns = {"library": lambda: epoch(loaders.train), "eager": eager_epoch}
    warm = {"library": lambda: epoch(warm_batches(list(loaders.train))),
            "eager": lambda: eager_epoch(2 * args.batch_size)}  # fmt: skip
    med, raw = compare(fns, device, args.repeats, warmup=warm)
    rows.append(dict(id="e", model=name, what="library epoch / eager fp32 epoch", seconds=raw,
                     value=med["library"] / med["eager"], library_epoch_s=med["library"],
                     eager_epoch_s=med["eager"], train_images=len(y_all), pipeline=model.pipeline))  # fmt: skip


def demo_row(args) -> dict | None:
    """d: the demo's wall time, given, read from a log, or measured here on 2 cores."""
    if args.demo_seconds is not None:
        return dict(id="d", model="cnn", what="make demo wall time (s), given", value=args.demo_seconds)  # fmt: skip
    if args.demo_log:
        found = re.findall(r"wall time: ([0-9.]+) s", Path(args.demo_log).read_text())
        if not found:
            raise SystemExit(f"{args.demo_log}: no 'wall time: X s' line")
        return dict(id="d", model="cnn", what=f"make demo wall time (s), from {args.demo_log}",
                    value=float(found[-1]))  # fmt: skip
    if not args.run_demo:
        return None
    exe = Path(sys.executable).with_name("ann2snn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ann2snn.cli"]
    with tempfile.TemporaryDirectory() as tmp:  # fresh: the demo would resume old runs
        cmd += ["demo", "--out", tmp, "--no-progress", "--device", "cpu", *shlex.split(args.demo_args)]  # fmt: skip
        if shutil.which("taskset") and (os.cpu_count() or 1) > 2:
            cmd = ["taskset", "-c", "0,1", *cmd]  # two cores, as on the reference machine
        env = os.environ | {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"demo failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    tail = proc.stdout[-1500:].replace(tmp, "<out>")  # no machine paths in the results
    return dict(id="d", model="cnn", what="ann2snn demo wall time (s), 2 cores", value=wall,
                command=shlex.join(cmd).replace(tmp, "<out>"), stdout_tail=tail)  # fmt: skip


def format_table(rows: list[dict]) -> str:
    lines = ["| ratio | model | measured | value | target | verdict |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["id"], r["model"])):
        op, goal = TARGETS.get(r["id"], (None, None))
        target = f"{'≤' if op == '<=' else '≥'} {goal}" if op else "—"
        verdict = {True: "PASS", False: "MISS", None: "recorded"}[r.get("pass")]
        lines.append(f"| {r['id']} | {r['model']} | {r['what']} | {r['value']:.3f} | {target} | {verdict} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:  # on a shared machine fewer threads than cores avoids OpenMP thrashing
        torch.set_num_threads(args.threads)
    device, out = args.device, Path(args.out)
    if device.type == "cuda":
        # Several variants of one model class are compiled side by side (a: four acts, then
        # c and e); past torch's default of 8 graphs per function it would silently fall
        # back to eager for the later ones and skew the ratios.
        dyn = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, limit, max(64, getattr(dyn, limit)))
    command = "python benchmarks/speed.py " + shlex.join(argv)
    env = environment() | {"device": str(device), "loadavg": os.getloadavg()}
    settings = {k: str(v) if k == "device" else v for k, v in vars(args).items()}
    results: dict[str, Any] = {"benchmark": "speed", "command": command, "settings": settings,
                               "environment": env, "rows": []}  # fmt: skip
    # Keys measured now replace old rows; other rows of a compatible earlier run stay.
    keys = {(i, m) for i in args.only for m in args.models}
    keys |= {("d", "cnn")} if args.demo_log or args.demo_seconds is not None or args.run_demo else set()  # fmt: skip
    if out.exists():
        old = json.loads(out.read_text())
        same = ("dataset", "batch_size", "device")
        if all(old.get("settings", {}).get(k) == settings[k] for k in same):
            results["rows"] = [r for r in old["rows"] if (r["id"], r["model"]) not in keys]
    rows = results["rows"]

    def add(new: list[dict]) -> None:
        for r in new:  # each row says which command and which machine state produced it
            op, goal = TARGETS.get(r["id"], (None, None))
            ok = None if op is None else r["value"] <= goal if op == "<=" else r["value"] >= goal
            r.update(target=[op, goal] if op else None, command=command, date=env["date"], git=env["git"],
                     loadavg=env["loadavg"], **{"pass": ok if math.isfinite(r["value"]) else False})  # fmt: skip
        rows.extend(new)
        results["table"] = format_table(rows)
        write_json(results, out)

    loaders = None
    if set("abce") & set(args.only):
        loaders, results["data"] = loaders_for(args, device)
    for name in args.models:
        for key, fn in (("a", ratio_a), ("b", ratio_b), ("c", ratio_c), ("e", ratio_e)):
            if key not in args.only:
                continue
            new: list[dict] = []
            fn(args, name, device, loaders, new)
            add(
                [r | {"data": results["data"]} for r in new]
            )  # saved after every ratio: a cut-off run still leaves its rows
    if (d := demo_row(args)) is not None:
        add([d])
    results["table"] = format_table(rows)
    write_json(results, out)
    print(results["table"])
    print(f"\nresults: {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
