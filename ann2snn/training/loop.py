"""Train the source ANN: one validated dataclass in, a self-describing run folder out.

>>> from ann2snn.training import TrainConfig, train
>>> cfg = TrainConfig.from_preset("qcfs", model="resnet20", dataset="cifar10", epochs=300)
>>> record = train(cfg)              # writes cfg.out_dir/{last,best,resume}.*
>>> model = ann2snn.load(cfg.out_dir)  # best epoch by validation accuracy

The loop is plain SGD with momentum, cosine annealing per epoch (optional linear
warm-up), cross-entropy, channels_last, and bf16 autocast on CUDA. Model selection
uses the validation split carved from the training set; the test accuracy is measured
every epoch for the record but never used to choose anything.

After every epoch the run folder gets ``best.*`` (when the selection score improved),
``last.*`` and finally ``resume.*`` — the resume pair is the commit point and holds
everything needed to continue (weights, optimizer, scheduler, RNG states, record), so
a run killed at any moment continues from its last complete epoch with ``resume=True``
and ends exactly where an uninterrupted run ends (bit for bit on CPU).

`train_one_epoch` and `evaluate` work with any ``nn.Module`` and any iterable of
``(x, y)`` batches.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._progress import ProgressBar
from ..checkpoint import clean_orphans, new_run_id, save_checkpoint, save_resume_state
from ..methods import epoch_hook
from ..models.external import is_external
from .config import TrainConfig
from .distributed import Runtime, broadcast_object, rank_device, runtime_from_env
from .lock import RunLock
from .resume import open_run, plain_recipe, rng_state, set_rng_state
from .setup import (
    Placement,
    TrainingSetup,
    build_data,
    initialise,
    length,
    prepare_training,
    source_model,
)
from .steps import lr_at, seed_everything
from .tasks import Task, task_for

__all__ = ["train"]


def train(
    config: TrainConfig,
    hooks: Any = None,
    *,
    resume: bool | None = None,
    model: nn.Module | None = None,
    loaders: Any = None,
) -> dict:
    """Train ``config.model`` on ``config.dataset``; checkpoint every epoch into ``out_dir``.

    Args:
        config: the run's recipe (`TrainConfig`). ``config.model`` is a zoo name,
            ``torchvision:NAME``, ``timm:NAME`` or ``package.module:function``.
        hooks: None, or a mapping/object with ``on_epoch_end(model, epoch, loaders, record)``
            called after each epoch's evaluation and BEFORE that epoch's checkpoint is
            written (``epoch`` = number of completed epochs). A returned dict is merged into
            ``record["extra"]``; its key ``"select_metric"`` (if present) replaces the
            validation accuracy as the score that picks ``best``.
        resume: overrides ``config.resume``. When true, continue from the last complete
            epoch in ``out_dir`` with the saved optimizer, scheduler and RNG states (a fresh
            run if the folder has no checkpoint).
        model: your own module instead of building ``config.model`` (never modified: a
            copy is trained). A model without quantized activations is `prepare`d with
            ``config.act``/``levels``/``pool``/``act_kwargs``; ``config.model`` is then
            only its name in the record, and ``ann2snn.load(out_dir, model=...)`` rebuilds it.
        loaders: your own data (an `ann2snn.data.Loaders` or an object with its fields)
            instead of ``create_loaders(config.dataset, ...)``.

    Returns:
        The record of the last epoch (as saved in ``last.json``).

    Raises:
        FileExistsError: ``out_dir`` already holds a run and resume is off.
        RunFolderBusyError: another process is writing to ``out_dir`` (a `FileExistsError`
            naming its pid and host); a lock left by a killed run is taken over.
    """
    placement = Placement.resolve(config)  # device, amp, layout, compile: resolved once
    rt = runtime_from_env(placement.device)
    # Only the primary rank writes, so only it holds the run folder's lock.
    with RunLock(config.out_dir) if rt.is_primary else contextlib.nullcontext():
        return _train(config, hooks, resume, model, loaders, rt, placement)


def _train(
    config: TrainConfig,
    hooks: Any,
    resume: bool | None,
    model: nn.Module | None,
    loaders: Any,
    rt: Runtime,
    placement: Placement,
) -> dict:
    run_dir = Path(config.out_dir)
    if rt.is_primary and run_dir.is_dir():
        clean_orphans(run_dir)  # temporary files of a save that was interrupted
    saved = open_run(config, config.resume if resume is None else resume, run_dir)
    # Data: the loaders need the device before the model exists.
    seed_everything(config.seed)
    device = rank_device(placement.device, rt)
    loaders, *data = build_data(config, loaders, device, rt)  # data: this rank's 3 splits
    log = sys.stderr if config.progress and rt.is_primary else None
    rt.barrier()  # every rank has read the folder's state before the primary writes to it
    # Model, task, optimizer, schedule.
    source, model_kwargs, prepare_args = source_model(config, model, loaders)
    task = task_for(config, source, loaders)
    prepared = prepare_args is not None or (model is None and is_external(config.model))
    init = initialise(source, config, loaders, log, prepared) if saved is None else None
    setup = prepare_training(source, config, rt, placement)
    # LambdaLR multiplies each group's base lr; stepped once per epoch.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        setup.optimizer, lambda epoch: lr_at(epoch, config) / config.lr
    )
    if saved is None:
        record = _new_record(config, loaders, model_kwargs, prepare_args, init, task)
    else:
        record = _restore(saved, setup, scheduler, config)
    record["runtime"] = setup.runtime()
    # NQ without its per-epoch σ calibration would silently train with σ = 0.
    on_epoch_end = _hook(hooks, "on_epoch_end") or epoch_hook(config.act, log=log)
    start = int(saved["epoch"]) if saved is not None else 0
    _log_start(log, config, setup, loaders.name, run_dir, start if saved is not None else None)

    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        bar, entry = _fit_epoch(setup, task, data, scheduler, config, epoch, log)
        _add_entry(record, entry, task.metric)
        score = entry.get(f"val_{task.metric}")
        select = _after_epoch(on_epoch_end, setup.model, loaders, record, rt, score)
        improved = _select(record, entry, select, t0)
        _save_epoch(run_dir, setup, scheduler, record, improved, rt)
        line = _epoch_line(entry, task, config.epochs, improved)
        if bar.enabled:
            bar.close(line)
        elif log is not None:  # progress="lines": the line alone
            print(line, file=log)
    return record


def _new_record(
    config: TrainConfig, loaders: Any, model_kwargs: dict, prepare_args: Any, init: Any, task: Task
) -> dict[str, Any]:
    """The record of a fresh run (what `ann2snn.load` rebuilds the model from, and more)."""
    record = {
        "model": config.model,
        "model_kwargs": model_kwargs,
        "prepare": prepare_args,
        "init": init,
        "activation": config.act,
        "levels": config.levels,
        "dataset": loaders.name,
        "recipe": plain_recipe(config),
        "epoch": 0,
        # Training records keep metrics in percent (as printed); losses are per sample.
        "metrics": {"history": [], "best_epoch": None, "best_select": None, "units": "percent"},
        "extra": {},
        "seed": config.seed,
        # Shared by every record of the run: files copied in from another run are refused.
        "run_id": new_run_id(),
    }
    if task.detection:
        record["task"] = "detection"
    return record


def _restore(saved: dict, setup: TrainingSetup, scheduler: Any, config: TrainConfig) -> dict:
    """Weights, optimizer, schedule and RNG states of the saved epoch; its record."""
    setup.model.load_state_dict(saved["model"], strict=True)
    setup.optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    record = saved["record"]
    record["recipe"] = plain_recipe(config)
    return record


def _hook(hooks: Any, name: str) -> Callable[..., Any] | None:
    if hooks is None:
        return None
    fn = hooks.get(name) if isinstance(hooks, Mapping) else getattr(hooks, name, None)
    if fn is not None and not callable(fn):
        raise TypeError(f"hooks.{name} must be callable, got {type(fn).__name__}")
    return fn


def _log_start(
    log: Any,
    config: TrainConfig,
    setup: TrainingSetup,
    dataset: str,
    run_dir: Path,
    resumed_after: int | None,
) -> None:
    if log is None:
        return
    n_params = sum(p.numel() for p in setup.model.parameters())
    what = "training" if resumed_after is None else f"resuming after epoch {resumed_after}"
    amp = f" {setup.runtime()['amp']}" if setup.amp_dtype else ""
    print(
        f"{what}: {config.model} ({n_params / 1e6:.2f}M params) on {dataset}, "
        f"{config.epochs} epoch{'' if config.epochs == 1 else 's'}, {setup.device}{amp} -> "
        f"{run_dir}",
        file=log,
    )


def _fit_epoch(
    setup: TrainingSetup,
    task: Task,
    data: list,
    scheduler: Any,
    config: TrainConfig,
    epoch: int,
    log: Any,
) -> tuple[ProgressBar, dict]:
    """Train one epoch, score the validation and test splits, step the schedule; the
    progress bar (closed by the caller) and the epoch's history entry."""
    lr = setup.optimizer.param_groups[0]["lr"]
    for loader in data:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)  # resumed runs replay the same shuffles/augmentations
    train_data, val_data, test_data = data
    bar = ProgressBar(  # lines only ("lines"): no bar, the epoch's line is printed plainly
        length(train_data),
        f"epoch {epoch + 1}/{config.epochs}",
        enabled=config.progress is True and log is not None,
    )
    scores = setup.epoch(
        train_data, label_smoothing=config.label_smoothing, progress=bar, loss_fn=task.loss
    )
    kw = dict(amp_dtype=setup.amp_dtype, channels_last=setup.channels_last)
    val = (
        task.scores(setup.step_model, val_data, setup.device, setup.ranks, **kw)
        if val_data is not None
        else {}
    )
    test = task.scores(setup.step_model, test_data, setup.device, setup.ranks, **kw)
    scheduler.step()
    entry = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": scores.loss,
        "train_acc": _finite_or_none(scores.acc),
    }
    for split, split_scores in (("val", val), ("test", test)):
        entry.update({f"{split}_{k}": _finite_or_none(v) for k, v in split_scores.items()})
    return bar, entry


def _add_entry(record: dict, entry: dict, metric: str) -> None:
    """The epoch's entry into the record's history and latest metrics."""
    metrics = record["metrics"]
    metrics["history"].append(entry)
    for key in ("train_loss", "train_acc", f"val_{metric}", f"test_{metric}"):
        metrics[key] = entry.get(key)
    record["epoch"] = entry["epoch"]


def _after_epoch(
    hook: Any, model: nn.Module, loaders: Any, record: dict, rt: Runtime, select: float | None
) -> float | None:
    """The after-epoch hook (e.g. NQ's σ calibration) on the primary rank, before this
    epoch's checkpoint so that what it computes is saved with the weights it belongs to;
    returns the score that selects ``best``: the hook's, else ``select`` (the validation
    metric)."""
    if hook is None:
        return select
    out = hook(model, record["epoch"], loaders, record) if rt.is_primary else None
    if rt.distributed:
        # What the primary's hook computed (σ, its score) reaches every rank.
        out = broadcast_object(out, rt)
        for b in model.buffers():
            dist.broadcast(b, 0)
    if out:
        out = dict(out)
        if "select_metric" in out:
            select = float(out.pop("select_metric"))
        record["extra"].update(out)
    return select


def _select(record: dict, entry: dict, select: float | None, t0: float) -> bool:
    """Whether this epoch is the best so far. Without a validation split (and no hook
    score) there is nothing to select on: the latest epoch counts as best."""
    entry["select_metric"] = select
    entry["time_s"] = round(time.perf_counter() - t0, 3)
    metrics = record["metrics"]
    best = metrics["best_select"]
    improved = best is None or select is None or select > best
    if improved:
        metrics["best_epoch"], metrics["best_select"] = entry["epoch"], select
    return improved


def _save_epoch(
    run_dir: Path, setup: TrainingSetup, scheduler: Any, record: dict, improved: bool, rt: Runtime
) -> None:
    """best → last → resume: resume.* is written last and is the commit point; a run
    killed before it is written redoes this epoch (identically) on resume."""
    model = setup.model
    if improved and rt.is_primary:
        save_checkpoint(run_dir, model, record, tag="best")
    if rt.distributed:
        record["extra"]["ddp_max_weight_difference"] = _weight_spread(model, rt)
    if rt.is_primary:
        save_checkpoint(run_dir, model, record, tag="last")
        state = {
            "epoch": record["epoch"],
            "model": model.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "record": record,
        }
        save_resume_state(run_dir, state)


def _epoch_line(entry: dict, task: Task, epochs: int, improved: bool) -> str:
    m = task.metric  # "acc", or "map50" for a detector
    acc = "" if task.detection else f" acc {entry['train_acc']:.2f}%"
    return (
        f"epoch {entry['epoch']}/{epochs}  lr {entry['lr']:.4g}  "
        f"train loss {entry['train_loss']:.4f}{acc}  val {m} {_pct(entry.get(f'val_{m}'))}  "
        f"test {_pct(entry[f'test_{m}'])}  {entry['time_s']:.1f}s" + ("  *" if improved else "")
    )


def _weight_spread(model: nn.Module, rt: Runtime) -> float:
    """Largest difference between ranks of any parameter's sum (0.0: identical weights)."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(rt.world_size)]
    dist.all_gather(gathered, sums)
    stacked = torch.stack(gathered)
    return float((stacked.max(0).values - stacked.min(0).values).max())


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"
