"""Command-line interface: ``ann2snn train | eval | finetune | export | check | demo``, thin
over the library."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import errno
import json
import sys
from pathlib import Path
from typing import Any

from ._io import VERSION
from .calibration import CALIBRATION_METHODS
from .data import list_datasets
from .deploy.nir import NIR_PROFILES
from .models import list_models
from .nn import list_activations, list_neurons
from .training import PRESETS, TrainConfig

__all__ = ["main", "build_parser"]


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default: argparse's own where the option has one;
    an option whose default comes from elsewhere (a preset, the run's record) says so in its
    text. Epilogs keep their line breaks (they are examples)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _recipe_default(name: str) -> str:
    """'(default: the preset's, else N)' for a `TrainConfig` field set by a recipe."""
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f"(default: the preset's, else {field.default})"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number_above(minimum: float, inclusive: bool):
    """argparse type: a finite number > ``minimum`` (>= when ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = value >= minimum if inclusive else value > minimum
        if not (ok and value < float("inf")):
            rel = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(
                f"must be a finite number {rel} {minimum}, got {text!r}"
            )
        return value

    return parse


_positive_float, _non_negative_float = _number_above(0, False), _number_above(0, True)
POS, NONNEG = _int_at_least(1), _int_at_least(0)


def _steps_arg(text: str) -> list[int]:
    """'1,2,4,8' → [1, 2, 4, 8]; '16' → [16] (a maximum, expanded with --T-max)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--T takes integers like 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--T values must be >= 1, got {text!r}")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ann2snn",
        description="Train quantized ANNs, convert them to spiking networks, simulate and report.",
        formatter_class=_Help,
        epilog=_examples(
            "ann2snn demo                      # Fashion-MNIST end to end, every method",
            "ann2snn COMMAND --help            # a command's options, defaults and examples",
        ),
    )
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument("--version", action="version", version=f"ann2snn {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_finetune, _add_export, _add_check, _add_demo):
        add(sub)
    return p


def _add_trust_code(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a run whose record names package.module:function to import and call it "
        "(only for runs you trust)",
    )


def _add_train(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        formatter_class=_Help,
        help="train a source ANN (QCFS, NQ, clip-quant or ReLU)",
        description="Train a source ANN; checkpoints every epoch into --out (accuracies in %).",
        epilog=_examples(
            "ann2snn train --model cnn --dataset fashion-mnist --preset qcfs --epochs 3 "
            "--out runs/cnn",
            "ann2snn train --resume --out runs/cnn --epochs 6   # extend: the rest from the record",
            "ann2snn train --model torchvision:resnet18 --dataset fashion-mnist --init r18.pth",
            "torchrun --nproc_per_node=2 -m ann2snn train --model vgg16 --dataset cifar10 ...",
        ),
    )
    t.add_argument(
        "--model",
        help=f"a zoo model ({', '.join(list_models())}), torchvision:NAME, timm:NAME or "
        "package.module:function (prepared with --act/--levels/--pool); required for a new run, "
        "read from the run's record with --resume --out RUN",
    )
    t.add_argument(
        "--init",
        help="pretrained weights (.safetensors or a torch .pth state dict) to fine-tune from; what "
        "was loaded, adapted or skipped is printed (default: none, random init)",
    )
    t.add_argument(
        "--dataset",
        help=f"one of {', '.join(list_datasets())}; required for a new run, read from its record with --resume --out RUN",
    )
    t.add_argument(
        "--task",
        choices=["classification", "detection"],
        help="checked against --dataset (the dataset decides the task; default: its task)",
    )
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a paper's recipe (flags override it; default: TrainConfig's defaults)",
    )
    _add_recipe_flags(t)
    t.add_argument("--seed", type=NONNEG, help=f"random seed {_recipe_default('seed')}")
    t.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: auto, cuda when available)"
    )
    t.add_argument(
        "--data-dir",
        help="where the dataset lives, the only place looked (default: $ANN2SNN_DATA, the "
        "Debian package folder, then ~/.cache/ann2snn)",
    )
    t.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download CIFAR with torchvision when --data-dir (or the cache) lacks it",
    )
    t.add_argument("--out", help="run folder (default runs/<dataset>-<model>-<act>-L<levels>)")
    t.add_argument("--resume", action="store_true", help="continue from the last complete epoch")
    t.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="under torchrun on GPUs: BatchNorm statistics over the global batch",
    )
    _add_data_flags(t)
    t.add_argument("--nq-steps", type=POS, default=4, help="NQ: T_n, the steps σ is measured at")
    t.add_argument(
        "--nq-batches",
        type=POS,
        help="NQ: validation batches σ is measured on (default: 10)",
    )
    t.add_argument(
        "--nq-augment",
        action="store_true",
        help="NQ: estimate σ on augmented training batches (as the reference code) "
        "instead of the validation split",
    )
    t.add_argument(
        "--no-progress", action="store_true", help="no live bar: one plain line per epoch"
    )


def _add_data_flags(t: argparse.ArgumentParser) -> None:
    """``train``'s data flags: how much of the dataset, and its augmentation."""
    t.add_argument(
        "--limit-train", type=POS, help="use only N training images, for quick runs (default: all)"
    )
    t.add_argument(
        "--limit-test",
        type=POS,
        help="use only N test (and validation) images (default: all)",
    )
    t.add_argument(
        "--autoaugment",
        action="store_true",
        default=None,
        help="CIFAR AutoAugment on the training split (default: off)",
    )
    t.add_argument("--cutout", type=NONNEG, help="Cutout square side in pixels (default: 0, off)")


def _add_recipe_flags(t: argparse.ArgumentParser) -> None:
    """The training recipe's flags (each a `TrainConfig` field of the same name)."""
    t.add_argument(
        "--act", choices=list_activations(), help=f"the ANN's activation {_recipe_default('act')}"
    )
    t.add_argument(
        "--levels",
        type=POS,
        help=f"quantization levels L (Q for clipq) {_recipe_default('levels')}",
    )
    t.add_argument(
        "--pool",
        choices=["avg", "max"],
        help=f"pooling of zoo models (max converts to LIPool) {_recipe_default('pool')}",
    )
    t.add_argument("--epochs", type=POS, help=f"epochs to train {_recipe_default('epochs')}")
    t.add_argument(
        "--batch-size",
        type=POS,
        help=f"global batch, split between processes {_recipe_default('batch_size')}",
    )
    t.add_argument("--lr", type=_positive_float, help=f"peak learning rate {_recipe_default('lr')}")
    t.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        help=f"weight decay {_recipe_default('weight_decay')}",
    )
    t.add_argument(
        "--threshold-param",
        choices=["log", "raw"],
        help="train log λ or λ itself, as the papers do (default: log)",
    )
    t.add_argument(
        "--threshold-decay",
        choices=["on", "off"],
        help="weight decay on λ (default: on for raw λ, off for log λ)",
    )


def _add_eval(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        formatter_class=_Help,
        help="convert a checkpoint and simulate the SNN over T",
        description="Convert a trained checkpoint and report SNN accuracy per time step. "
        "Tables and --csv print accuracy and mAP in %; report.json and --json hold "
        "fractions (0-1), as their 'units' entry says.",
        epilog=_examples(
            "ann2snn eval runs/cnn --neuron if --T 1,2,4,8",
            "ann2snn eval runs/cnn --neuron gn --tau 4 --T 1,2 --activity",
            "ann2snn eval runs/cnn-clipq --neuron cif --sleep 8 --T 1,2,4,8",
            "ann2snn eval runs/cnn --T 1,2 --calibrate bias --csv > acc.csv",
        ),
    )
    e.add_argument("checkpoint", help="run folder or .json/.safetensors checkpoint")
    e.add_argument("--neuron", default="if", choices=list_neurons(), help="the SNN's neuron")
    e.add_argument(
        "--T",
        type=_steps_arg,
        default=None,
        help="time steps to report, e.g. 1,2,4,8 (default 1..32 by powers of 2)",
    )
    e.add_argument(
        "--T-max", type=POS, help="report every step 1..T_max (replaces --T; default: off)"
    )
    e.add_argument("--tau", type=POS, help="GN: members per group (default: the ANN's L)")
    e.add_argument("--sleep", type=NONNEG, default=0, help="CIF: input-free steps per sleep phase")
    e.add_argument(
        "--margin",
        type=POS,
        help="CIF: a sleep phase after every M wake steps (default: after all T)",
    )
    e.add_argument("--batch-size", type=POS, default=256, help="test images per batch")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="layer precision (membranes stay fp32)",
    )
    e.add_argument(
        "--compile-neurons",
        action="store_true",
        help="fuse each neuron step with torch.compile (same results; needs a C++ compiler on CPU)",
    )
    e.add_argument(
        "--activity",
        action="store_true",
        help="also report firing rates, SynOps and energy (SNN ÷ ANN) at every T",
    )
    e.add_argument(
        "--activity-batches", type=POS, help="count activity on the first N batches (default all)"
    )
    _add_calibration_flags(e)
    e.add_argument("--data-dir", help="where the dataset lives (default: as for train)")
    e.add_argument("--download", action="store_true", help="download CIFAR if missing")
    e.add_argument("--limit-test", type=POS, help="evaluate the first N test images (default: all)")
    e.add_argument(
        "--out",
        help="folder for report.json and the plots (default: RUN/eval/<neuron>-<options>-T<steps>, "
        "one folder per kind of evaluation)",
    )
    fmt = e.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report as JSON")
    fmt.add_argument("--csv", action="store_true", help="print accuracy (%%) per step as CSV")
    e.add_argument("--no-progress", action="store_true", help="no live progress bar")
    _add_trust_code(e)


def _add_calibration_flags(e: argparse.ArgumentParser) -> None:
    """``eval``'s post-conversion calibration flags (`ann2snn.calibrate`)."""
    e.add_argument(
        "--calibrate",
        choices=[*CALIBRATION_METHODS, "auto", "offset"],
        help="post-conversion calibration, one calibrated network per reported T unless "
        "--calib-T is given: 'potential' (v(0) per neuron, Li et al. 2021) or 'bias' (per "
        "channel, Li et al. 2021) measured on the validation split; 'cos' (offset spikes, "
        "Hao et al. 2023: no data, --cos-rho pre-simulation steps per layer, counted in the "
        "total steps); 'auto' keeps whichever of potential and bias brings the output "
        "closest to the ANN's on the validation split; 'offset' is the deprecated name of "
        "potential per channel (default: none)",
    )
    e.add_argument(
        "--cos-rho",
        type=POS,
        help="cos: pre-simulation steps per layer (default: 4, as the paper)",
    )
    e.add_argument(
        "--calib-batches",
        type=POS,
        default=8,
        help="validation batches used by --calibrate",
    )
    e.add_argument(
        "--calib-T",
        type=POS,
        help="calibrate once, for this T, and run all T on it (default: once per T)",
    )


def _add_finetune(sub: Any) -> None:
    f = sub.add_parser(
        "finetune",
        formatter_class=_Help,
        help="train the converted IF network itself through T steps (surrogate gradient)",
        description="Convert a trained QCFS/NQ run to IF neurons, train the SNN through its T "
        "steps on the run's training split (BPTT, a rectangular surrogate gradient, weights "
        "and thresholds, BatchNorm frozen) and save it as a run folder of its own, which "
        "`ann2snn eval OUT --neuron if` simulates. Nothing is written until it is done.",
        epilog=_examples(
            "ann2snn finetune runs/cnn --T 2 --epochs 1 --out runs/cnn-ft2",
            "ann2snn eval runs/cnn-ft2 --neuron if --T 1,2,4",
        ),
    )
    f.add_argument("checkpoint", help="run folder or .json/.safetensors checkpoint")
    f.add_argument("--T", type=POS, required=True, help="time steps the SNN is trained at")
    f.add_argument(
        "--epochs",
        type=_positive_float,
        default=1.0,
        help="passes over the training split (a fraction trains on that share)",
    )
    f.add_argument("--lr", type=_positive_float, default=2e-3, help="SGD learning rate")
    f.add_argument("--out", required=True, help="new run folder (never an existing run)")
    f.add_argument("--data-dir", help="where the dataset lives (default: as for train)")
    f.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_trust_code(f)


def _finetune(args: argparse.Namespace) -> int:
    from .runs import finetune_run

    out, entry = finetune_run(
        args.checkpoint,
        args.out,
        args.T,
        args.epochs,
        args.lr,
        data_dir=args.data_dir,
        device=args.device,
        trust_code=args.trust_code,
    )
    print(
        f"finetune: {entry['images']:,} images at T={entry['T']} in {entry['seconds']:.1f} s, "
        f"loss {entry['loss_first']:.3f} -> {entry['loss_last']:.3f}\nrun: {out}"
    )
    return 0


def _add_export(sub: Any) -> None:
    x = sub.add_parser(
        "export",
        formatter_class=_Help,
        help="write a converted run as NIR, ONNX or torch.export",
        description="Convert a trained run and write the SNN for other tools.",
        epilog=_examples(
            "ann2snn export runs/cnn --format nir --out cnn.nir",
            "ann2snn export runs/cnn --format nir --profile sinabs --out cnn-sinabs.nir",
            "ann2snn export runs/cnn --format onnx --T 4 --binary --out cnn.onnx",
            "ann2snn export runs/cnn --format torch --T 4 --time-input --out cnn.pt2",
        ),
    )
    x.add_argument("checkpoint", help="run folder or .json/.safetensors checkpoint")
    x.add_argument(
        "--format",
        required=True,
        choices=["nir", "onnx", "torch"],
        help="NIR graph, ONNX with T unrolled, or a torch.export program (.pt2)",
    )
    x.add_argument("--T", type=POS, help="ONNX/torch: time steps unrolled (default: 4)")
    x.add_argument(
        "--profile",
        choices=list(NIR_PROFILES),
        default="ann2snn",
        help="NIR: the reader the file is for: 'ann2snn' (lossless in ann2snn), 'nir' (NIR "
        "as specified), or a file that spikingjelly, sinabs, norse or snntorch loads and runs "
        "as written; what that reader loses is printed per layer",
    )
    x.add_argument("--force", action="store_true", help="replace an existing output file")
    x.add_argument("--neuron", default="if", choices=list_neurons(), help="the SNN's neuron")
    x.add_argument("--tau", type=POS, help="GN: members per group (default: the ANN's L)")
    x.add_argument(
        "--binary",
        action="store_true",
        help="ONNX/torch: the deploy form (0/1 spikes, θ in the weights; NIR always is)",
    )
    x.add_argument(
        "--time-input",
        action="store_true",
        help="ONNX/torch: input [T, B, ...] instead of one image batch repeated",
    )
    x.add_argument(
        "--sleep", type=NONNEG, default=0, help="NIR: CASC sleep steps recorded in the file"
    )
    x.add_argument("--out", required=True, help="file to write (.nir, .onnx, .pt2)")
    x.add_argument(
        "--data-dir",
        help="dataset for the example input and percentile thresholds (default: as for train)",
    )
    _add_trust_code(x)


def _add_check(sub: Any) -> None:
    c = sub.add_parser(
        "check",
        formatter_class=_Help,
        help="support report: every op as supported or unsupported",
        description="List every op of a model and whether it converts (exit 1 if anything "
        "does not).",
        epilog=_examples(
            "ann2snn check vgg16 --pool max",
            "ann2snn check runs/cnn --neuron cif --json",
        ),
    )
    c.add_argument("target", help="a run folder/checkpoint, or a model name (cnn, vgg16, ...)")
    c.add_argument("--neuron", default="if", choices=list_neurons(), help="the SNN's neuron")
    c.add_argument(
        "--act",
        default="qcfs",
        choices=list_activations(),
        help="activation a zoo model is built with (ignored for a run)",
    )
    c.add_argument(
        "--pool",
        default="avg",
        choices=["avg", "max"],
        help="pooling a zoo model is built with (ignored for a run)",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_trust_code(c)


def _add_demo(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        formatter_class=_Help,
        help="Fashion-MNIST end to end: train, convert, simulate every method",
        description="Train a small CNN per method on Fashion-MNIST and print the "
        "accuracy-vs-T table (test accuracy in %).",
        epilog=_examples(
            "ann2snn demo",
            "ann2snn demo --methods qcfs,gn --epochs 1 --T 8 --out runs/quick",
            "ann2snn demo --task detection",
        ),
    )
    d.add_argument(
        "--task",
        choices=["classification", "detection"],
        default="classification",
        help="detection: yolo_tiny on the Fashion-MNIST scenes, mAP per T",
    )
    d.add_argument(
        "--out", help="folder of the runs and report (default: runs/demo, runs/demo-detection)"
    )
    d.add_argument("--data-dir", help="where Fashion-MNIST lives (default: as for train)")
    d.add_argument("--epochs", type=POS, help="epochs per ANN (default: 3)")
    d.add_argument("--T", type=POS, help="largest T (default: 16; detection 8)")
    d.add_argument("--sleep", type=NONNEG, default=8, help="CASC sleep steps")
    d.add_argument(
        "--methods",
        help="comma-separated methods (default: qcfs,gn,nq,casc; detection qcfs,gn,casc)",
    )
    d.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    d.add_argument(
        "--limit-train",
        type=POS,
        help="training images per ANN (default: all; detection 6000)",
    )
    d.add_argument("--limit-test", type=POS, help="test images (default: all; detection 500)")
    d.add_argument("--no-activity", action="store_true", help="skip the SynOps/energy table")
    d.add_argument("--no-progress", action="store_true", help="no live progress bars")


def _train(args: argparse.Namespace) -> int:
    from .data import DETECTION_DATASETS, dataset_task
    from .methods import epoch_hook
    from .training import TrainConfig, train

    # Flags named like TrainConfig fields map onto them; --out and --threshold-decay differ,
    # and resume and progress are set below.
    mapping = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}
    mapping.update(out_dir=args.out, progress=None, resume=None)
    if args.threshold_decay is not None:
        mapping["threshold_decay"] = args.threshold_decay == "on"
    overrides = {k: v for k, v in mapping.items() if v is not None}
    overrides.update(resume=args.resume, progress="lines" if args.no_progress else True)
    cfg = _train_config(args, overrides, TrainConfig)
    if args.task and args.task != dataset_task(cfg.dataset):
        raise ValueError(
            f"--task {args.task} does not match --dataset {cfg.dataset!r}; detection datasets "
            f"are {', '.join(DETECTION_DATASETS)}, every other dataset is classification"
        )
    batches = {} if args.nq_batches is None else {"max_batches": args.nq_batches}
    hook = epoch_hook(cfg.act, steps=args.nq_steps, augment=args.nq_augment, **batches)
    record = train(cfg, hooks={"on_epoch_end": hook} if hook else None)
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun rank 0 reports
        return 0
    m, epochs = record.get("metrics", {}), record.get("epoch")
    key = "map50" if record.get("task") == "detection" else "acc"
    pct = lambda v: "-" if v is None else f"{v:.2f}%"  # noqa: E731 - metrics are in percent
    print(
        f"done: {epochs} epoch{'' if epochs == 1 else 's'}, val {key} {pct(m.get(f'val_{key}'))}, "
        f"test {key} {pct(m.get(f'test_{key}'))} -> {cfg.out_dir}"
    )
    return 0


def _train_config(args: argparse.Namespace, overrides: dict[str, Any], config_cls: Any) -> Any:
    """The run's `TrainConfig`: a preset (or the defaults) with the flags given; with
    ``--resume --out RUN`` and no --model/--dataset, the run's own recorded recipe with the
    flags given on top."""
    if args.model and args.dataset:
        if args.preset:
            return config_cls.from_preset(args.preset, **overrides)
        return config_cls(**overrides)
    if not (args.resume and args.out):
        raise ValueError(
            "--model and --dataset are required for a new run (with --resume --out RUN they "
            "are read from the run's record)"
        )
    from .checkpoint import load_record

    fields = {f.name for f in dataclasses.fields(config_cls)}
    recipe = {k: v for k, v in (load_record(args.out).get("recipe") or {}).items() if k in fields}
    if not recipe.get("model") or not recipe.get("dataset"):
        raise ValueError(
            f"--resume --out {args.out}: the run's record holds no recipe; pass --model and "
            "--dataset"
        )
    return config_cls(**{**recipe, **overrides})


def _dtype(name: str):
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _eval(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ._io import writable_folder
    from .report import format_cost_table, format_table, write_report
    from .runs import evaluate_run

    steps = list(range(1, args.T_max + 1)) if args.T_max else args.T
    # Where the report goes is checked before anything is simulated.
    # One folder per kind of evaluation: a second eval with other settings never replaces
    # the first's report.
    folder = Path(args.out) if args.out else _eval_folder(args, steps)
    create = bool(args.out) or _run_folder(args.checkpoint).is_dir()
    out_dir = writable_folder(folder, "report folder (--out)", create=create)
    report = evaluate_run(
        args.checkpoint,
        args.neuron,
        steps,
        sleep=args.sleep,
        margin=args.margin,
        tau=args.tau,
        calibrate=args.calibrate,
        calib_T=args.calib_T,
        calib_batches=args.calib_batches,
        cos_rho=args.cos_rho,
        activity=args.activity,
        activity_batches=args.activity_batches,
        compiled=args.compile_neurons,
        dtype=_dtype(args.dtype),
        device=args.device,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        limit_test=args.limit_test,
        download=args.download,
        progress=not (args.no_progress or args.json or args.csv),
        trust_code=args.trust_code,
    )
    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun rank 0 reports
        return 0
    report["settings"] = {k: v for k, v in vars(args).items() if k != "func"}
    steps, row = report["steps"], report["rows"][0]
    detection = report.get("metric") == "map50"
    paths = write_report(report, out_dir, steps)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    elif args.csv and not detection:
        _print_csv(row, steps, args.activity)
    elif detection:
        print("mAP@0.5 (%)\n" + format_table([row], steps, metric="map50"))
        print("\nCOCO mAP@[.5:.95] (%)\n" + format_table([row], steps, metric="map"))
        _print_paths(paths)
    else:
        print("test accuracy (%)\n" + format_table([row], steps))
        if args.activity:
            print("\n" + format_cost_table([row], steps))
        _print_paths(paths)
    return 0


def _eval_folder(args: argparse.Namespace, steps: list[int] | None) -> Path:
    from .runs import DEFAULT_STEPS

    """``RUN/eval/<neuron>[-tau…][-sleep…][-margin…][-<calibration>][-<dtype>]-T…``."""
    parts = [args.neuron]
    for flag, value in (("tau", args.tau), ("sleep", args.sleep), ("margin", args.margin)):
        if value:
            parts.append(f"{flag}{value}")
    if args.calibrate:
        rho = f"rho{args.cos_rho}" if args.calibrate == "cos" and args.cos_rho else ""
        parts.append(args.calibrate + rho + (f"{args.calib_T}" if args.calib_T else ""))
    if args.dtype != "fp32":
        parts.append(args.dtype)
    parts.append("T" + "_".join(map(str, steps or DEFAULT_STEPS)))
    return _run_folder(args.checkpoint) / "eval" / "-".join(parts)


def _print_paths(paths: dict[str, Path]) -> None:
    """Every file a report wrote, one line each."""
    print()
    for key, path in paths.items():
        print(f"{'report' if key == 'json' else key.replace('_', ' ')}: {path}")


def _print_csv(row: dict[str, Any], steps: list[int], activity: bool) -> None:
    w = csv.writer(sys.stdout)
    cost = ["synops", "snn_macs", "energy_ratio"] if activity else []
    w.writerow(["wake_steps", "total_steps", "accuracy_pct", *cost])
    for t in steps:
        extra = [row[f"{c}_by_wake"].get(str(t)) for c in cost]
        acc = row["accuracy_by_wake"].get(str(t))
        w.writerow([t, _total_steps(row, t), None if acc is None else 100 * acc, *extra])


def _total_steps(row: dict[str, Any], t: int) -> int:
    """Wake + sleep steps behind the accuracy reported for ``t`` wake steps."""
    if "total_steps_by_wake" in row:  # one wake-sleep run per T
        return row["total_steps_by_wake"][str(t)]
    # One run of the schedule: the last record with t wake steps (after any sleep).
    return max(n for w, n in zip(row["wake_steps"], row["total_steps"]) if w == t)


def _run_folder(path: str) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def _check(args: argparse.Namespace) -> int:
    from .conversion.converter import check

    target = Path(args.target)
    if target.exists():
        from .checkpoint import load

        model = load(target, trust_code=args.trust_code)
    else:
        from .models import create_model

        model = create_model(args.target, act=args.act, pool=args.pool)
    report = check(model, args.neuron)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(report)
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    det = args.task == "detection"
    # Detection: 6,000 training scenes, 3 epochs of batch 32 at lr 0.01, T up to 8.
    defaults = (
        dict(
            epochs=3,
            limit_train=6000,
            limit_test=500,
            out="runs/demo-detection",
            lr=0.01,
            batch_size=32,
            activity=False,
            T=8,
        )
        if det
        else dict(epochs=3, out="runs/demo", T=16)
    )
    methods = tuple(m.strip() for m in (args.methods or "").split(",") if m.strip()) or None
    cfg = DemoConfig(
        out_dir=args.out or defaults["out"],
        data_dir=args.data_dir,
        epochs=args.epochs or defaults["epochs"],
        T=args.T or defaults["T"],
        casc_sleep=args.sleep,
        methods=methods,
        device=args.device,
        task=args.task,
        limit_train=args.limit_train or defaults.get("limit_train"),
        limit_test=args.limit_test or defaults.get("limit_test"),
        progress=not args.no_progress,
        activity=not args.no_activity and defaults.get("activity", True),
        **{k: defaults[k] for k in ("lr", "batch_size") if k in defaults},
    )
    run_demo(cfg)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .runs import export_run

    options = {"tau": args.tau} if args.tau is not None else {}
    out, warnings = export_run(
        args.checkpoint,
        args.format,
        args.out,
        args.T,
        args.neuron,
        binary=args.binary,
        sleep=args.sleep,
        time_input=args.time_input,
        profile=args.profile,
        data_dir=args.data_dir,
        trust_code=args.trust_code,
        force=args.force,
        **options,
    )
    from .deploy.readers import READERS

    simulator = args.profile in READERS  # a profile for one simulator, which loads the file
    who = "a reader without ann2snn's metadata" if args.profile == "ann2snn" else "a NIR reader"
    for line in warnings:
        print(f"{args.profile if simulator else who} loses: {line}", file=sys.stderr)
    print(f"wrote {out}")
    if args.format == "nir" and simulator:
        print(f"load it with: {NIR_PROFILES[args.profile].loads.replace('path', repr(str(out)))}")
    from .deploy.onnx import onnx_side_file

    if args.format == "onnx" and (side := onnx_side_file(out)):
        print(f"wrote {side} (the weights; keep it next to {Path(out).name})")
    return 0


# A full disk, a quota, a read-only folder: what is safe and what to do, per command.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_DISK_ADVICE = {
    "train": "every complete epoch before this one is saved in the run folder (its resume "
    "pair is the last commit); free space or make the folder writable, then run the same "
    "command with --resume",
    "eval": "the run folder is untouched; free space, or write the report elsewhere with --out",
    "export": "no file was replaced (exports are written whole or not at all); free space or "
    "choose another --out",
    "finetune": "the source run is untouched and no partial run was written; free space or "
    "choose another --out, then run the same command",
}


def _disk_message(command: str, err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    advice = _DISK_ADVICE.get(command, "nothing was written")
    return f"{err.strerror or err}{where}: {advice}"


def _close_process_group() -> None:
    """Under torchrun: leave the process group together, then before the interpreter exits.
    A gloo group left open, or torn down by one rank while another still uses it, can abort
    a process after the work was done ("terminate called without an active exception",
    exit code −6: seen about once in four runs on a loaded machine). Every rank waits for
    the others first — at most a minute, so a rank that died cannot hang the rest."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        else:
            dist.barrier()
    except RuntimeError:  # a rank is gone: leave anyway
        pass
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ann2snn`` console script.

    A user's mistake (a bad argument, a missing file or dataset, an unsupported model, a
    run folder in use) prints one line, ``ann2snn COMMAND: error: ...``, and exits 2;
    ``--debug`` shows the traceback instead. Ctrl-C exits 130 with one line.
    """
    args = build_parser().parse_args(argv)
    handlers = {
        "train": _train,
        "eval": _eval,
        "finetune": _finetune,
        "check": _check,
        "demo": _demo,
        "export": _export,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":
            hint = "; every complete epoch is saved: run the same command with --resume to continue"
        print(f"ann2snn {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one line (or --debug)
        if args.debug:
            raise
        msg = str(err) or type(err).__name__
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            msg = _disk_message(args.command, err)
        elif isinstance(err, FileExistsError):  # train: the run folder already holds a run
            msg = msg.replace("pass resume=True", "pass --resume")
            msg = msg.replace("choose another out_dir", "choose another --out")
        user_error = isinstance(
            err, ValueError | FileExistsError | FileNotFoundError | TypeError | PermissionError
        ) or (isinstance(err, OSError) and err.errno in _DISK_ERRORS)
        if not user_error:
            msg = f"{type(err).__name__}: {msg} (run with --debug for the traceback)"
        print(f"ann2snn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        _close_process_group()


if __name__ == "__main__":
    sys.exit(main())
