"""Cost of the single tensor operations the activations and neurons are built from, on one
activation-sized tensor: which formulation of a step is cheaper on this device.

    python benchmarks/op_costs.py --threads 1                      # CPU, 128×16×32×32 fp32
    python benchmarks/op_costs.py --device cuda --dtype bfloat16

Each figure is the median time of one call (several calls per sample, as timeit does),
also given in ns per element. Never imported by the package.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ann2snn.nn.neurons import ConsistentIF, IFNeuron, compile_unavailable
from ann2snn.report import environment, write_json


def ops(z: torch.Tensor) -> dict[str, Any]:
    """name -> zero-argument callable; z is the activation-sized input."""
    g = torch.randn_like(z)
    out = torch.empty_like(z)
    mask = torch.empty_like(z, dtype=torch.bool)
    lam = torch.tensor(2.0, device=z.device, dtype=z.dtype)
    flat = (z.numel(),)
    return {
        # elementwise building blocks
        "add_ (tensor)": lambda: out.add_(g),
        "mul_ (scalar)": lambda: out.mul_(1.0),
        "floor_": lambda: out.floor_(),
        "clamp (scalar bounds)": lambda: torch.clamp(z, 0.0, 2.0),
        "clamp (0-dim tensor bounds)": lambda: torch.clamp(z, min=torch.zeros_like(lam), max=lam),
        "ge -> float out": lambda: torch.ge(z, 1.0, out=out),
        "ge -> bool out": lambda: torch.ge(z, 1.0, out=mask),
        "bool -> float copy": lambda: out.copy_(mask),
        "where (bool, scalar, scalar)": lambda: torch.where(mask, 1.0, 0.0),
        # gradients: what ReLU uses, what the QCFS/clip-quant CPU backward uses
        "threshold_backward (ReLU)": lambda: torch.ops.aten.threshold_backward(g, z, 0.0),
        "hardtanh_backward (band)": lambda: torch.ops.aten.hardtanh_backward(g, z, 0.0, 2.0),
        "dot (1-D views)": lambda: torch.dot(g.as_strided(flat, (1,)), z.as_strided(flat, (1,))),
        "(a*b).sum()": lambda: (g * z).sum(),
        # random numbers: NQ's noise
        "randn_like": lambda: torch.randn_like(z),
        "normal_(0, sigma)": lambda: out.normal_(0.0, 0.25),
        "rand_like (uniform)": lambda: torch.rand_like(z),
        # one whole neuron step (charge, fire, reset), eager ops and torch.compile'd
        **neuron_steps(z),
    }


def neuron_steps(z: torch.Tensor) -> dict[str, Any]:
    """One step of the IF and consistent IF neurons on z, eager and compiled (when this
    device can compile: `compile_unavailable`). The state carries over between calls."""
    found: dict[str, Any] = {}
    kinds = ["eager"] + ([] if compile_unavailable(z.device) else ["compiled"])
    for name, cls in (("IF", IFNeuron), ("CIF", ConsistentIF)):
        for kind in kinds:
            n = cls(1.0, compiled=kind == "compiled").to(z.device)
            found[f"{name} step ({kind})"] = lambda n=n: n.step(z)
    return found


def time_call(fn, device: torch.device, min_s: float, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    n = max(1, int(min_s / max(time.perf_counter() - t0, 1e-9)))
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--shape", default="128,16,32,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.1, help="per sample")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="benchmarks/results/op-costs.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, shape = torch.device(args.device), tuple(int(s) for s in args.shape.split(","))
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(
        device, getattr(torch, args.dtype)
    )
    rows = []
    for name, fn in ops(z).items():
        s = time_call(fn, device, args.min_seconds, args.repeats)
        rows.append({"op": name, "us": s * 1e6, "ns_per_element": s * 1e9 / z.numel()})
        print(f"{name:32s} {s * 1e6:10.1f} us  {s * 1e9 / z.numel():6.2f} ns/element", flush=True)
    results = {"benchmark": "op_costs", "command": "python benchmarks/op_costs.py " + shlex.join(argv),
               "environment": environment() | {"device": str(device), "threads": torch.get_num_threads()},
               "shape": list(shape), "dtype": args.dtype, "rows": rows}  # fmt: skip
    write_json(results, Path(args.out))
    return results


if __name__ == "__main__":
    main()
