"""Which torchvision / timm models convert: prepare ok / convert ok / exact at T = 1 with GN.

    python benchmarks/model_support.py --out benchmarks/results/cpu/model-support.json

For each model (random weights, ``num_classes=10``, random BatchNorm statistics so that
activations are not trivially zero): `ann2snn.prepare` (QCFS, L = 4, λ from 8 random
calibration images), `ann2snn.convert` with group neurons (τ = 4) and with IF neurons,
and the largest |SNN − ANN| of the GN network at T = 1 on 4 random images (exact
conversion gives 0 up to float rounding). A model that fails a stage records the first
line of the error, which names the op or module. timm models are skipped when timm is
not installed. This file is never imported by the package.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

import torch
from torch import nn

from ann2snn import check, convert, prepare, run
from ann2snn.report import environment, write_json

TORCHVISION = [
    "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn",
    "vgg16_bn", "alexnet", "squeezenet1_0", "densenet121", "googlenet", "mobilenet_v2",
    "mnasnet0_5", "shufflenet_v2_x0_5", "regnet_x_400mf", "mobilenet_v3_small",
    "efficientnet_b0", "convnext_tiny", "vit_b_16",
]  # fmt: skip
TIMM = ["resnet18", "resnet50", "resnet18d", "regnetx_002", "dla34", "densenet121",
        "mobilenetv2_050", "repvgg_a0", "vgg11_bn", "efficientnet_b0"]  # fmt: skip


def randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 and "unsupported op" in lines[0] else ""
    return f"{type(e).__name__}: {lines[0] if lines else ''}" + (f" — {detail}" if detail else "")


def probe(source: str, name: str, size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"source": source, "model": name}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = torchvision.models.get_model(name, num_classes=10, **kwargs)
    else:
        import timm

        model = timm.create_model(name, num_classes=10)
    model = randomize_bn(model)
    x = torch.randn(4, 3, size, size)
    try:
        p = prepare(model, "qcfs", 4, calibration=torch.randn(8, 3, size, size)).eval()
        row["prepare"] = "ok"
        row["activation_sites"] = sum(1 for m in p.modules() if hasattr(m, "spike_spec"))
    except Exception as e:  # noqa: BLE001 - the reason is the result
        row.update(prepare=_first_line(e), convert_gn="-", convert_if="-", exact_gn_T1=None)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row
    with torch.no_grad():
        ann = p(x)
        for neuron, opts in (("gn", {"tau": 4}), ("if", {})):
            try:
                snn = convert(p, neuron, **opts)
                row[f"convert_{neuron}"] = "ok"
                if neuron == "gn":
                    diff = float((run(snn, x, 1) - ann).abs().max())
                    row["max_abs_diff_gn_T1"] = diff
                    row["ann_max_abs"] = float(ann.abs().max())
                    row["exact_gn_T1"] = diff <= 1e-4 * max(1.0, row["ann_max_abs"])
            except Exception as e:  # noqa: BLE001
                row[f"convert_{neuron}"] = _first_line(e)
    row["check_cif"] = "ok" if check(p, "cif").ok else "unsupported"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torchvision", default=",".join(TORCHVISION))
    p.add_argument("--timm", default=",".join(TIMM))
    p.add_argument("--size", type=int, default=64, help="input side (default 64)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/cpu/model-support.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = [("torchvision", n) for n in args.torchvision.split(",") if n]
    try:
        import timm  # noqa: F401

        targets += [("timm", n) for n in args.timm.split(",") if n]
    except ImportError:
        print("timm not installed: its models are skipped", file=sys.stderr)
    rows = []
    result = {"command": "python " + shlex.join(sys.argv), "size": args.size, "rows": rows,
              "environment": environment()}  # fmt: skip
    print("| source | model | prepare | convert (GN) | exact at T=1 (GN) | convert (IF) |")
    print("|---|---|---|---|---|---|")
    for source, name in targets:
        row = probe(source, name, args.size)
        rows.append(row)
        write_json(result, args.out)
        exact = row.get("exact_gn_T1")
        print(f"| {source} | {name} | {row['prepare']} | {row['convert_gn']} | "
              f"{'-' if exact is None else ('yes' if exact else 'no')} | {row['convert_if']} |",
              flush=True)  # fmt: skip
    json.dumps(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
