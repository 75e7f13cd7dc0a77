"""Working with a trained run folder: evaluate it as an SNN (`evaluate_run`) or export it
(`export_run`). The CLI's ``eval`` and ``export`` are thin wrappers over these; scripts can
call them the same way.

Both read the run through `RunRecord` (dataset, activation, levels, task) and the method
table (`ann2snn.methods`: τ = L for group neurons, percentile thresholds for ReLU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._io import check_output, environment
from ._util import positive_int, resolve_device
from .checkpoint import RunRecord, load
from .conversion import convert
from .data import create_loaders
from .deploy import export_nir, export_onnx, export_program
from .deploy.onnx import EXPORT_FORMATS
from .evaluation import ann_accuracy, evaluate_snn, evaluate_wake_sleep
from .methods import needs_threshold_data, neuron_options
from .training.distributed import ShardedLoader, all_sum, rank_device, runtime_from_env

__all__ = ["evaluate_run", "export_run", "finetune_run", "example_input", "DEFAULT_STEPS"]

#: The T reported when none are asked for.
DEFAULT_STEPS = (1, 2, 4, 8, 16, 32)


def _label(act: str | None, neuron: str, options: dict[str, Any]) -> str:
    return f"{act or '?'}+{neuron}" + (f" (tau={options['tau']})" if "tau" in options else "")


def evaluate_run(
    checkpoint: str | os.PathLike,
    neuron: str = "if",
    steps: list[int] | None = None,
    *,
    sleep: int = 0,
    margin: int | None = None,
    tau: int | None = None,
    calibrate: str | None = None,
    calib_T: int | None = None,
    calib_batches: int = 8,
    cos_rho: int | None = None,
    activity: bool = False,
    activity_batches: int | None = None,
    compiled: bool = False,
    dtype: torch.dtype | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    batch_size: int = 256,
    limit_test: int | None = None,
    download: bool = False,
    progress: bool = True,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Convert a trained run with ``neuron`` and simulate it on its test split; the report.

    The report (JSON-able) holds ``title``, ``checkpoint``, ``record`` (the run's model,
    recipe, metrics), ``steps``, one row (`ann2snn.evaluation.evaluate_snn`'s, with the
    ANN's accuracy; a detector's row holds mAP) and ``environment``. A group neuron's τ
    defaults to the ANN's levels; a ReLU network's thresholds come from the validation
    split. ``calibrate`` (a method of `ann2snn.calibrate`) calibrates on the validation
    split, once per reported T unless ``calib_T`` is given (``cos_rho``: COS's ρ). Under ``torchrun`` each rank
    simulates its share of the test set and the counts are summed. ``trust_code``: see
    `ann2snn.load` (a record naming ``package.module:function`` runs that code).
    """
    resolved = resolve_device("device", device)
    rt = runtime_from_env(resolved)
    dev = rank_device(resolved, rt)
    model = load(checkpoint, map_location=dev, trust_code=trust_code)
    record = RunRecord.of(model)
    if record.dataset is None:
        raise ValueError(
            f"{checkpoint}: the checkpoint record names no dataset; it was not written by "
            "ann2snn train"
        )
    loaders = create_loaders(
        record.dataset,
        data_dir=data_dir,
        batch_size=batch_size,
        device=dev,
        augment=False,
        limit_test=limit_test,
        download=download,
    )
    steps = sorted(set(steps or DEFAULT_STEPS))
    options = neuron_options(neuron, record.levels, tau)
    label = _label(record.act, neuron, options)
    if record.task == "detection":
        _refuse_for_detection(
            calibrate=calibrate, activity=activity, compiled=compiled, dtype=dtype
        )
        row = _detection_row(model, loaders.test, neuron, steps, sleep, margin, label, options)
    else:
        test = (
            ShardedLoader(loaders.test, rt.rank, rt.world_size) if rt.distributed else loaders.test
        )
        label += _add_options(
            options,
            loaders.val,
            steps,
            calibrate,
            calib_T,
            calib_batches,
            cos_rho,
            activity,
            activity_batches,
            compiled,
        )
        per_T = "post_calibration" in options and calib_T is None and len(steps) > 1
        progress = progress and rt.is_primary
        if (sleep and margin is None and len(steps) > 1) or per_T:
            row = evaluate_wake_sleep(
                model, test, steps, sleep, progress, label=label, neuron=neuron, **options
            )
        else:
            data = loaders.val if needs_threshold_data(record.act) else None
            row = evaluate_snn(
                model,
                test,
                neuron,
                T=max(steps),
                sleep=sleep,
                margin=margin,
                dtype=dtype,
                progress=progress,
                label=label,
                calibration=data,
                **options,
            )
        row["ann_accuracy"] = ann_accuracy(model, test)
        if rt.distributed:
            _sum_accuracies(row, test, rt)
    report = {"title": f"{record.model} on {record.dataset}: {label}"}
    if record.task == "detection":
        report["metric"] = "map50"
    return report | {
        "units": REPORT_UNITS,
        "checkpoint": str(checkpoint),
        "record": record.summary(),
        "steps": steps,
        "rows": [row],
        "environment": environment(),
    }


# What the numbers of a report are (printed tables and --csv show the fractions in percent).
REPORT_UNITS = {
    "accuracy, map50, map": "fraction of the test split (0-1)",
    "synops": "synaptic operations per image",
    "energy_ratio": "SNN energy / ANN energy per image (45 nm: 0.9 pJ per AC, 4.6 pJ per MAC)",
    "seconds": "wall-clock seconds",
}


def _refuse_for_detection(**given: Any) -> None:
    """Name the options a detection run cannot take (yet), by their CLI flags."""
    flags = {"compiled": "--compile-neurons"}
    if names := [flags.get(n, f"--{n}") for n, value in given.items() if value]:
        raise ValueError(f"{', '.join(names)}: not available for detection runs (yet)")


def _add_options(
    options: dict[str, Any],
    val: Any,
    steps: list[int],
    calibrate: str | None,
    calib_T: int | None,
    calib_batches: int,
    cos_rho: int | None,
    activity: bool,
    activity_batches: int | None,
    compiled: bool,
) -> str:
    """Add the evaluation's options (compiled neurons, activity counting, post-conversion
    calibration on the validation split ``val``) to ``options``; the label's suffix."""
    if compiled:
        options["compiled"] = True
    if activity:
        options.update(activity=True, activity_batches=activity_batches)
    if not calibrate:
        return ""
    if val is None:
        raise ValueError("calibrate needs the validation split; this dataset has none")
    cal = {"method": calibrate, "data": val, "batches": calib_batches}
    if calibrate == "cos" and cos_rho:
        cal["rho"] = cos_rho
    options["post_calibration"] = cal | ({"T": calib_T} if calib_T else {})
    return f", {calibrate}-calibrated" + (f" at T={calib_T}" if calib_T else "")


def _detection_row(
    model: Any,
    test: Any,
    neuron: str,
    steps: list[int],
    sleep: int,
    margin: int | None,
    label: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """A detector's row: SNN mAP at every T and the ANN's mAP."""
    from .detection import ann_map, detector_spec, evaluate_detection_snn

    row = evaluate_detection_snn(model, test, neuron, steps, sleep, margin, label=label, **options)
    ann = ann_map(model, test, detector_spec(model))
    row["ann_map50"], row["ann_map"] = ann["map50"], ann["map"]
    return row


def _sum_accuracies(row: dict[str, Any], shard: Any, rt: Any) -> None:
    """Replace a rank's accuracies (fractions of its shard) by those of the whole test set:
    exact counts are summed over the ranks."""
    n_local = sum(int(y.shape[0]) for _, y in shard)
    keys = list(row["accuracy_by_wake"])
    fractions = [row["ann_accuracy"], *(row["accuracy_by_wake"][k] for k in keys)]
    fractions += list(row.get("accuracy", []))
    counts = torch.tensor([round(f * n_local) for f in fractions] + [n_local], dtype=torch.float64)
    (counts,) = all_sum(counts, rt=rt)
    total = float(counts[-1])
    acc = (counts[:-1] / total).tolist()
    row["ann_accuracy"] = acc[0]
    row["accuracy_by_wake"] = dict(zip(keys, acc[1 : 1 + len(keys)]))
    if "accuracy" in row:
        row["accuracy"] = acc[1 + len(keys) :]
    row["images"], row["world_size"] = int(total), rt.world_size


def example_input(record: RunRecord | dict, data_dir: str | None = None) -> Tensor:
    """Two zero images ``[2, C, H, W]`` of the run's input shape (from its record, else
    from its dataset's validation split). Two, not one: `torch.export` fixes a
    dimension of size 1, and the batch must stay dynamic."""
    record = record if isinstance(record, RunRecord) else RunRecord(record)
    if record.input_shape is not None:
        return torch.zeros(2, *record.input_shape)
    loaders = create_loaders(record.dataset, data_dir=data_dir, batch_size=2, augment=False)
    x, _ = next(iter(loaders.val if loaders.val is not None else loaders.test))
    return torch.zeros_like(x[:2]).cpu()


def _check_export_args(
    fmt: str, T: int | None, sleep: int, time_input: bool, profile: str = "ann2snn"
) -> None:
    """Refuse a format that does not exist and options the chosen format would ignore."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if profile != "ann2snn" and fmt != "nir":
        raise ValueError(f"export: --profile {profile} is a NIR profile; {fmt} has none")
    if T is not None:
        positive_int("T", T)
    if sleep and fmt != "nir":
        raise ValueError(
            f"export: --sleep {sleep} is carried by NIR only (an exported {fmt} graph cannot "
            "switch biases off)"
        )
    if fmt == "nir" and (T is not None or time_input):
        flag = "--T" if T is not None else "--time-input"
        raise ValueError(
            f"export: {flag} shapes an unrolled ONNX/torch graph; a NIR file runs any number "
            "of steps — leave it out for --format nir"
        )


def export_run(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    T: int | None = None,
    neuron: str = "if",
    binary: bool = False,
    sleep: int = 0,
    time_input: bool = False,
    data_dir: str | None = None,
    trust_code: bool = False,
    force: bool = False,
    profile: str = "ann2snn",
    **options: Any,
) -> tuple[Path, list[str]]:
    """What ``ann2snn export`` does: load a trained run, convert it with ``neuron`` and
    write it as ``fmt`` (``nir``, ``onnx`` or ``torch``) to ``out``. Returns the path and
    the warnings (for NIR: what other readers lose).

    ``T`` (default 4) and ``time_input`` shape the unrolled ONNX/torch graph; a NIR file
    runs any T and refuses them, as ONNX/torch refuse ``sleep``. ``out`` is written whole
    or not at all; it is never a run's checkpoint file, and an existing file is replaced
    only with ``force``.
    """
    _check_export_args(fmt, T, sleep, time_input, profile)
    out = check_output(out, force, "export: --out")
    T = 4 if T is None else T
    model = load(checkpoint, map_location="cpu", trust_code=trust_code)
    record = RunRecord.of(model)
    calibration = None
    if needs_threshold_data(record.act):  # θ from data: the 99.9th percentile on validation
        calibration = create_loaders(
            record.dataset, data_dir=data_dir, batch_size=256, augment=False
        ).val
    snn = convert(model, neuron, calibration=calibration, **options)
    example = example_input(record, data_dir)
    if fmt == "nir":
        return out, export_nir(snn, out, example, sleep=sleep, profile=profile)
    if fmt == "onnx":
        return export_onnx(snn, out, example, T, time_input, binary), []
    export_program(snn, example, T, out, time_input, binary)
    return out, []


def finetune_run(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    T: int,
    epochs: float = 1.0,
    lr: float = 2e-3,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    trust_code: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """What ``ann2snn finetune`` does: convert a trained run to IF neurons, `finetune` it at
    ``T`` on the run's training split, and save the result as a run folder of its own at
    ``out`` (`to_ann`: the ANN whose IF conversion is the fine-tuned SNN, so ``ann2snn eval
    OUT --neuron if`` simulates it). Returns the folder and the fine-tune's record entry.

    ``out`` must not hold a run: nothing is ever written over a run's checkpoints. The
    folder is written atomically at the end: an interrupted fine-tune leaves no partial
    run, and the same command starts it again."""
    from .checkpoint import new_run_id, save_checkpoint
    from .training import FinetuneLog, finetune, to_ann
    from .training.resume import has_run

    positive_int("T", T)

    out = Path(out)
    if has_run(out):
        raise FileExistsError(
            f"--out {out} already holds a run; its checkpoints are never replaced — "
            "choose another --out"
        )
    dev = resolve_device("device", device)
    model = load(checkpoint, map_location=dev, trust_code=trust_code)
    record = RunRecord.of(model)
    if needs_threshold_data(record.act):
        raise ValueError(
            f"finetune: the run's activation is {record.act!r}; fine-tuned thresholds are "
            "saved as the λ of a quantized activation (qcfs, nq)"
        )
    recipe = record.get("recipe") or {}
    loaders = create_loaders(
        record.dataset,
        data_dir=data_dir,
        device=dev,
        batch_size=recipe.get("batch_size", 128),
        seed=recipe.get("seed", 42),
    )
    log = FinetuneLog(T)
    tuned = finetune(convert(model, "if"), loaders.train, T, epochs=epochs, lr=lr, log=log)
    entry = {
        "source": str(checkpoint),
        "T": T,
        "epochs": epochs,
        "lr": lr,
        "images": log.images,
        "seconds": log.seconds,
        "loss_first": log.losses[0],
        "loss_last": log.losses[-1],
        # The record `load` verified and built the model from (best.json, else last.json).
        "source_record_sha256": record.get("record_sha256"),
    }

    # The source's description of the model and data; what was measured is not carried.
    dropped = (
        "metrics",
        "run_id",
        "extra",
        "weights_file",
        "weights_sha256",
        "created",
        "record_sha256",
        "format",
        "format_version",
        "versions",
    )
    new = {k: v for k, v in record.raw.items() if k not in dropped}
    new.update(finetune=entry, run_id=new_run_id(), metrics={"history": [], "units": "percent"})
    save_checkpoint(out, to_ann(tuned, model).cpu(), new, tag="best")
    return out, entry
