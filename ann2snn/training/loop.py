"""Train the source ANN: one validated dataclass in, a self-describing run folder out.

>>> from ann2snn.training.loop import TrainConfig, train
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
import copy
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import json_safe, sha256_file
from .._progress import ProgressBar
from .._util import resolve_device
from ..calibration.noise import nq_epoch_hook
from ..checkpoint import (
    RESUME_TAG,
    CheckpointError,
    clean_orphans,
    load_record,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
)
from ..conversion.preparation import is_prepared, prepare
from ..conversion.thresholds import init_thresholds
from ..data import create_loaders
from ..models import create_model
from ..models.external import is_external, load_pretrained
from ..nn.activations import THRESHOLD_PARAM_NAMES, clamp_thresholds_, is_quantized_activation
from ..nn.network import device_of
from .config import PRESETS, RESUMABLE_CHANGES, TrainConfig
from .distributed import (
    Runtime,
    ShardedLoader,
    all_sum,
    broadcast_object,
    rank_device,
    runtime_from_env,
)
from .lock import RunLock

__all__ = [
    "TrainConfig",
    "PRESETS",
    "Scores",
    "train",
    "train_one_epoch",
    "prepare_training",
    "TrainingSetup",
    "evaluate",
    "param_groups",
    "lr_at",
    "seed_everything",
]

# ----------------------------------------------------------------------------- pieces


class Scores(NamedTuple):
    """Top-1 accuracy in percent and mean cross-entropy over all samples of a loop."""

    acc: float
    loss: float


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(
    model: nn.Module, weight_decay: float, threshold_decay: bool = False
) -> list[dict[str, Any]]:
    """SGD parameter groups: everything decays; activation thresholds only if asked.

    With ``threshold_decay=False`` the QCFS thresholds (``log_threshold`` or
    ``raw_threshold``) get no decay. On log λ, decay would pull log λ toward 0, i.e. λ
    toward 1 — an arbitrary value with no regularising meaning; on a raw λ it is what the
    papers' code does (``TrainConfig.threshold_decay`` follows ``threshold_param``). All
    other parameters (including BatchNorm's) keep it, as in the reference code.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_threshold = name.rsplit(".", 1)[-1] in THRESHOLD_PARAM_NAMES
        (no_decay if is_threshold and not threshold_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_at(epoch: int, config: TrainConfig) -> float:
    """Learning rate used during 0-based ``epoch``: linear warm-up from 1e-6 over
    ``warmup_epochs`` (CASC), then cosine from ``lr`` toward 0 over the remaining epochs
    (stepped per epoch, like `CosineAnnealingLR(T_max=epochs)` when there is no warm-up)."""
    w, lr = config.warmup_epochs, config.lr
    if epoch < w:
        start = min(1e-6, lr)
        return start + (lr - start) * epoch / w
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / (config.epochs - w)))


def _to(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    device: str | torch.device | None = None,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: ProgressBar | None = None,
    runtime: Runtime | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Scores:
    """One pass of SGD over ``loader``; returns the running (train-mode) accuracy and loss.

    ``amp_dtype`` (e.g. torch.bfloat16) turns on autocast; the loss is computed in fp32.
    ``loss_fn(output, y)`` replaces the cross-entropy (a detector's loss); the accuracy is
    then NaN.
    With a distributed ``runtime`` the scores are summed over all ranks.
    Raises FloatingPointError if the loss became NaN/inf (learning rate too high).
    """
    device = torch.device(device) if device is not None else device_of(model)
    model.train()
    # Running sums stay on the device: no GPU→CPU sync per step.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0

    def stats() -> dict[str, float]:
        return {
            "loss": loss_sum.item() / max(seen, 1),
            "acc": 100.0 * correct.item() / max(seen, 1),
        }

    for x, y in loader:
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)  # (B, num_classes)
        if loss_fn is None:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        else:
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        loss_sum += loss.detach() * n
        if loss_fn is None:
            correct += (logits.argmax(1) == y).sum()
        seen += n
        if progress is not None:
            progress.update(1, stats=stats)
    loss_sum, correct, seen = _over_ranks(loss_sum, correct, seen, runtime)
    mean_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"training loss is {mean_loss}; lower lr (or use warmup_epochs) and resume from "
            "the last checkpoint"
        )
    acc = 100.0 * correct.item() / max(seen, 1) if seen and loss_fn is None else math.nan
    return Scores(acc, mean_loss if seen else math.nan)


def _over_ranks(
    loss_sum: Tensor, correct: Tensor, seen: int, runtime: Runtime | None
) -> tuple[Tensor, Tensor, int]:
    """A loop's running sums, summed over all ranks of a distributed ``runtime``."""
    if runtime is None or not runtime.distributed:
        return loss_sum, correct, seen
    seen_t = torch.tensor(seen, dtype=torch.long, device=loss_sum.device)
    loss_sum, correct, seen_t = all_sum(loss_sum, correct, seen_t, rt=runtime)
    return loss_sum, correct, int(seen_t)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    device: str | torch.device | None = None,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    runtime: Runtime | None = None,
) -> Scores:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` in eval mode over ``loader``
    (NaN for an empty loader). The model's train/eval mode is restored afterwards. With a
    distributed ``runtime`` each rank evaluates its shard and the counts are summed."""
    device = torch.device(device) if device is not None else device_of(model)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in loader:
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)  # (B, num_classes)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    model.train(was_training)
    loss_sum, correct, seen = _over_ranks(loss_sum, correct, seen, runtime)
    if seen == 0:
        return Scores(math.nan, math.nan)
    return Scores(100.0 * correct.item() / seen, loss_sum.item() / seen)


# ----------------------------------------------------------------------------- RNG state
# Saved as uint8 tensors (no pickle): torch's and CUDA's states already are; Python's
# and NumPy's Mersenne-Twister words (uint32) are stored as their little-endian bytes.


def _u8(words: Any) -> Tensor:
    return torch.from_numpy(np.asarray(words, dtype="<u4").view(np.uint8).copy())


def _words(t: Tensor) -> np.ndarray:
    return np.frombuffer(t.numpy().tobytes(), dtype="<u4")


def _rng_state() -> dict[str, Any]:
    py_version, py_words, py_gauss = random.getstate()
    np_name, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        # Only when CUDA is in use: querying it would otherwise initialise CUDA.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": {"version": py_version, "words": _u8(py_words), "gauss_next": py_gauss},
        "numpy": {
            "name": np_name,
            "words": _u8(np_words),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in _words(py["words"])), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], _words(n["words"]).copy(), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )


# ----------------------------------------------------------------------------- the run


def _resolve_runtime(config: TrainConfig) -> tuple[torch.device, torch.dtype | None, bool]:
    device = resolve_device("device", config.device)
    cuda = device.type == "cuda"
    if cuda:
        # Fixed input shapes every step: let cuDNN time its algorithms once and keep the best.
        torch.backends.cudnn.benchmark = True
    amp_dtype = torch.bfloat16 if config.amp == "bf16" or (config.amp == "auto" and cuda) else None
    # channels_last on every device: on a 2-core CPU it trained the cnn 1.47× and
    # resnet20 1.2× faster than NCHW (pooling and BatchNorm have vectorised NHWC kernels).
    channels_last = True if config.channels_last == "auto" else bool(config.channels_last)
    return device, amp_dtype, channels_last


def _compile_mode(config: TrainConfig, device: torch.device) -> str | None:
    """torch.compile mode for this run, or None for eager."""
    if config.compile is False or (config.compile == "auto" and device.type != "cuda"):
        return None
    return "default" if config.compile in ("auto", True) else str(config.compile)


class TrainingSetup(NamedTuple):
    """How `train` runs its steps: the model on its device and in its layout, the
    (maybe compiled) callable that shares its parameters, the optimizer, the runtime."""

    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile_mode: str | None
    ranks: Runtime = Runtime()

    def runtime(self) -> dict[str, Any]:
        """JSON-able summary (the record's ``runtime``)."""
        return {
            "device": str(self.device),
            "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "off",
            "channels_last": self.channels_last,
            "compile": self.compile_mode or "off",
            "world_size": self.ranks.world_size,
            "backend": self.ranks.backend,
        }

    def epoch(self, loader: Iterable[tuple[Tensor, Tensor]], **kwargs: Any) -> Scores:
        """`train_one_epoch` with this setup's model, optimizer and runtime."""
        return train_one_epoch(self.step_model, loader, self.optimizer, device=self.device,
                               amp_dtype=self.amp_dtype, channels_last=self.channels_last,
                               runtime=self.ranks, **kwargs)  # fmt: skip


def prepare_training(
    model: nn.Module, config: TrainConfig, runtime: Runtime | None = None
) -> TrainingSetup:
    """Move ``model`` to the run's device and layout and build its SGD and (on CUDA) its
    compiled step exactly as `train` does; the benchmarks time this same setup. With a
    distributed ``runtime`` the step runs through ``DistributedDataParallel``."""
    device, amp_dtype, channels_last = _resolve_runtime(config)
    runtime = runtime or Runtime()
    device = rank_device(device, runtime)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        param_groups(model, config.weight_decay, config.decays_thresholds),
        lr=config.lr,
        momentum=config.momentum,
        fused=device.type == "cuda",  # one kernel for the whole update instead of one per tensor
    )
    if any(getattr(m, "threshold_param", None) == "raw" for m in model.modules()):
        # A raw λ could cross zero in one large step: project it back after every step.
        optimizer.register_step_post_hook(lambda *_: clamp_thresholds_(model))
    # The compiled wrapper shares parameters with `model`; checkpoints use `model` so their
    # keys carry no "_orig_mod." prefix.
    compile_mode = _compile_mode(config, device)
    if config.sync_bn and runtime.distributed:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (SyncBatchNorm runs on NCCL); got cpu")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    step = model
    if runtime.distributed:
        ids = [device.index] if device.type == "cuda" else None
        step = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    step_model = torch.compile(step, mode=compile_mode) if compile_mode else step
    return TrainingSetup(
        model, step_model, optimizer, device, amp_dtype, channels_last, compile_mode, runtime
    )


def _hook(hooks: Any, name: str) -> Callable[..., Any] | None:
    if hooks is None:
        return None
    fn = hooks.get(name) if isinstance(hooks, Mapping) else getattr(hooks, name, None)
    if fn is not None and not callable(fn):
        raise TypeError(f"hooks.{name} must be callable, got {type(fn).__name__}")
    return fn


def _has_run(run_dir: Path) -> bool:
    return any((run_dir / f"{tag}.json").exists() for tag in ("last", "best", RESUME_TAG))


def _plain_recipe(config: TrainConfig) -> dict[str, Any]:
    return json_safe(asdict(config))


def _check_resumable(
    config: TrainConfig, saved: Mapping[str, Any], run_dir: Path, done: int
) -> None:
    now = _plain_recipe(config)
    changed = sorted(
        k
        for k in set(now) | set(saved)
        if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k)
    )
    if "epochs" in changed and config.epochs >= done:
        # Extending (or shortening down to what is done) a run: the cosine schedule of the
        # remaining epochs follows the new total.
        changed.remove("epochs")
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} → {now.get(k)!r}" for k in changed)
        raise ValueError(
            f"{run_dir}: cannot resume with a different recipe ({diffs}); resume with the "
            "original settings, or choose another out_dir for a new run"
        )


def _check_first_epoch_only(config: TrainConfig, run_dir: Path) -> None:
    """Refuse to restart in a folder that holds more than an uncommitted first epoch of a run
    with this recipe."""
    for tag in ("best", "last"):
        path = run_dir / f"{tag}.json"
        if not path.exists():
            continue
        try:
            record = load_record(path)
        except CheckpointError:
            record = None
        ok = record is not None and record.get("epoch") == 1
        if ok:
            try:
                _check_resumable(config, record.get("recipe") or {}, run_dir, 0)
            except ValueError:
                ok = False
        if not ok:
            raise FileExistsError(
                f"{run_dir} holds a checkpoint but no {RESUME_TAG}.json, so it cannot be "
                "resumed; choose another out_dir for a new run"
            )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


_LOADER_FIELDS = ("train", "val", "test", "num_classes", "in_channels", "image_size", "name")


def _check_loaders(loaders: Any) -> None:
    missing = [f for f in _LOADER_FIELDS if not hasattr(loaders, f)]
    if missing:
        raise TypeError(
            f"loaders: {type(loaders).__name__} lacks {', '.join(missing)}; pass an "
            "ann2snn.data.Loaders (or an object with the same fields)"
        )


def _source_model(
    config: TrainConfig, model: nn.Module | None, loaders: Any
) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """(the model to train, the record's model_kwargs, the record's prepare arguments)."""
    if model is None:
        model_kwargs = dict(
            num_classes=loaders.num_classes,
            in_channels=loaders.in_channels,
            act=config.act,
            levels=config.levels,
            pool=config.pool,
            image_size=loaders.image_size,
            **config.activation_kwargs(),
        )
        return create_model(config.model, **model_kwargs), model_kwargs, None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if is_prepared(model) or any(is_quantized_activation(m) for m in model.modules()):
        return copy.deepcopy(model), {}, None  # already quantized: trained as it is
    prepared = prepare(model, config.act, config.levels, config.pool, **config.activation_kwargs())
    return prepared, {}, dict(prepared.ann2snn_prepare)  # what `load` prepares again


def _initialise(
    model: nn.Module, config: TrainConfig, loaders: Any, log: Any, prepared: bool
) -> dict[str, Any] | None:
    """Start a run: ``config.init``'s pretrained weights (by name), then, for a pretrained
    or a freshly prepared model, each λ at the 99.9th percentile of its ReLU on the
    validation split. (The activations' default λ = 8 suits the zoo's models; on a
    torchvision ResNet-18 it quantized nearly every activation to 0 and the network did
    not learn: 10.0 % after two Fashion-MNIST epochs against 70.09 % with λ from data,
    docs/benchmarks.md.)"""
    info: dict[str, Any] = {}
    if config.init:
        report = load_pretrained(model, config.init)
        if log is not None:
            print(f"init: {report.summary()}", file=log)
        info.update(path=str(config.init), sha256=sha256_file(config.init),
                    loaded=len(report["loaded"]), adapted=report["adapted"],
                    skipped=report["skipped"])  # fmt: skip
    if (config.init or prepared) and "init_threshold" not in config.act_kwargs:
        val = loaders.val if loaders.val is not None and _len(loaders.val) else None
        data, split = (val, "validation") if val is not None else (loaders.train, "training")
        calibrated = init_thresholds(model, data, batches=10)
        model.load_state_dict(calibrated.state_dict())
        info["thresholds"] = f"99.9th percentile of each ReLU on 10 {split} batches"
    return info or None


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
    rt = runtime_from_env(_resolve_runtime(config)[0])
    # Only the primary rank writes, so only it holds the run folder's lock.
    with RunLock(config.out_dir) if rt.is_primary else contextlib.nullcontext():
        return _train(config, hooks, resume, model, loaders, rt)


def _train(
    config: TrainConfig,
    hooks: Any,
    resume: bool | None,
    model: nn.Module | None,
    loaders: Any,
    rt: Runtime,
) -> dict:
    resume = config.resume if resume is None else resume
    run_dir = Path(config.out_dir)
    saved = None
    if rt.is_primary and run_dir.is_dir():
        clean_orphans(run_dir)  # temporary files of a save that was interrupted
    if _has_run(run_dir):
        if not resume:
            raise FileExistsError(
                f"{run_dir} already holds a training run; pass resume=True to continue it, or "
                "choose another out_dir (runs are never overwritten)"
            )
        if not (run_dir / f"{RESUME_TAG}.json").exists():
            # Killed while writing its very first checkpoint (best/last of epoch 1 are there,
            # the commit point is not): that run is redone from the start. Anything else
            # is not ours to overwrite.
            _check_first_epoch_only(config, run_dir)
        else:
            saved = load_resume_state(run_dir)
            _check_resumable(config, saved["record"]["recipe"], run_dir, int(saved["epoch"]))

    # The loaders need the device before the model exists.
    device = rank_device(_resolve_runtime(config)[0], rt)
    seed_everything(config.seed)
    if loaders is None:
        loaders = create_loaders(
            config.dataset,
            data_dir=config.data_dir,
            batch_size=config.batch_size,
            val_fraction=config.val_fraction,
            seed=config.seed,
            num_workers=config.num_workers,
            device=device,
            autoaugment=config.autoaugment,
            cutout=config.cutout,
            limit_train=config.limit_train,
            limit_test=config.limit_test,
            download=config.download,
        )
    _check_loaders(loaders)
    log = sys.stderr if config.progress and rt.is_primary else None
    # Every rank has read the folder's state before the primary writes to it.
    rt.barrier()
    # Each rank trains and evaluates on its rows of every global batch; hooks (NQ's σ
    # calibration) see the whole splits, on the primary rank.
    train_data, val_data, test_data = (
        _shard(d, rt) for d in (loaders.train, loaders.val, loaders.test)
    )
    source, model_kwargs, prepare_args = _source_model(config, model, loaders)
    task = _task(config, source, loaders)
    prepared = prepare_args is not None or (model is None and is_external(config.model))
    init = _initialise(source, config, loaders, log, prepared) if saved is None else None
    setup = prepare_training(source, config, rt)
    model, step_model, optimizer = setup.model, setup.step_model, setup.optimizer
    # LambdaLR multiplies each group's base lr; stepped once per epoch.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_at(epoch, config) / config.lr
    )

    if saved is not None:
        model.load_state_dict(saved["model"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"])
        record = saved["record"]
        record["recipe"] = _plain_recipe(config)
        start = int(saved["epoch"])
    else:
        record = {
            "model": config.model,
            "model_kwargs": model_kwargs,
            "prepare": prepare_args,
            "init": init,
            "activation": config.act,
            "levels": config.levels,
            "dataset": loaders.name,
            "recipe": _plain_recipe(config),
            "epoch": 0,
            "metrics": {"history": [], "best_epoch": None, "best_select": None},
            "extra": {},
            "seed": config.seed,
        }
        if task.detection:
            record["task"] = "detection"
        start = 0
    record["runtime"] = setup.runtime()
    on_epoch_end = _hook(hooks, "on_epoch_end")
    if on_epoch_end is None and config.act == "nq":
        # NQ without its per-epoch σ calibration would silently train with σ = 0.
        on_epoch_end = nq_epoch_hook(log=log)
    if log is not None:
        n_params = sum(p.numel() for p in model.parameters())
        what = f"resuming after epoch {start}" if saved is not None else "training"
        print(
            f"{what}: {config.model} ({n_params / 1e6:.2f}M params) on {loaders.name}, "
            f"{config.epochs} epochs, {device}"
            + (f" {record['runtime']['amp']}" if setup.amp_dtype else "")
            + f" -> {run_dir}",
            file=log,
        )

    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        for loader in (train_data, val_data, test_data):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)  # resumed runs replay the same shuffles/augmentations
        desc = f"epoch {epoch + 1}/{config.epochs}"
        bar = ProgressBar(_len(train_data), desc, enabled=log is not None)
        train_scores = setup.epoch(train_data, label_smoothing=config.label_smoothing, progress=bar,
                                   loss_fn=task.loss)  # fmt: skip
        kw = dict(amp_dtype=setup.amp_dtype, channels_last=setup.channels_last)
        val = task.scores(step_model, val_data, device, rt, **kw) if val_data is not None else {}
        test = task.scores(step_model, test_data, device, rt, **kw)
        scheduler.step()

        entry = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_scores.loss,
            "train_acc": _finite_or_none(train_scores.acc),
        }
        for split, scores in (("val", val), ("test", test)):
            entry.update({f"{split}_{k}": _finite_or_none(v) for k, v in scores.items()})
        main = task.metric  # "acc", or "map50" for a detector
        val_acc = entry.get(f"val_{main}")
        metrics = record["metrics"]
        metrics["history"].append(entry)
        metrics.update({k: entry.get(k) for k in ("train_loss", "train_acc", f"val_{main}", f"test_{main}")})  # fmt: skip
        record["epoch"] = epoch + 1

        # The hook (e.g. NQ's σ calibration) runs before this epoch's checkpoint so that
        # what it computes is saved with the weights it belongs to.
        select = val_acc
        if on_epoch_end is not None:
            out = on_epoch_end(model, epoch + 1, loaders, record) if rt.is_primary else None
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
        entry["select_metric"] = select
        entry["time_s"] = round(time.perf_counter() - t0, 3)
        # Without a validation split (and no hook score) there is nothing to select
        # on: the latest epoch counts as best.
        best = metrics["best_select"]
        improved = best is None or select is None or select > best
        if improved:
            metrics["best_epoch"], metrics["best_select"] = epoch + 1, select

        # best → last → resume: resume.* is written last and is the commit point; a run
        # killed before it is written redoes this epoch (identically) on resume.
        if improved:
            if rt.is_primary:
                save_checkpoint(run_dir, model, record, tag="best")
        if rt.distributed:
            record["extra"]["ddp_max_weight_difference"] = _weight_spread(model, rt)
        if rt.is_primary:
            save_checkpoint(run_dir, model, record, tag="last")
            save_resume_state(
                run_dir,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "record": record,
                },
            )
        bar.close(
            f"{desc}  lr {lr:.4g}  train loss {train_scores.loss:.4f}"
            + (f" acc {train_scores.acc:.2f}%" if not task.detection else "")
            + f"  val {main} {_pct(val_acc)}  test {_pct(entry[f'test_{main}'])}  {entry['time_s']:.1f}s"
            + ("  *" if improved else "")
        )
    return record


class _Task(NamedTuple):
    """What a run optimises and reports: classification (cross-entropy, top-1 %) or
    detection (`ann2snn.detection.head.yolo_loss`, mAP@0.5 % and COCO mAP %)."""

    detection: bool
    loss: Callable[[Tensor, Tensor], Tensor] | None
    spec: Any

    @property
    def metric(self) -> str:
        return "map50" if self.detection else "acc"

    def scores(self, model: nn.Module, data: Any, device: torch.device, rt: Runtime,
               **kw: Any) -> dict[str, float]:  # fmt: skip
        if not self.detection:
            s = evaluate(model, data, device, runtime=rt, **kw)
            return {"acc": s.acc, "loss": s.loss}
        from ..detection.evaluation import evaluate_detector

        map50, map_, loss = evaluate_detector(model, data, self.spec, device, **kw)
        return {"map50": map50, "map": map_, "loss": loss}


def _task(config: TrainConfig, model: nn.Module, loaders: Any) -> _Task:
    """The run's task, from its dataset; a detection run needs a detector and a method
    whose training does not measure classification accuracy."""
    from ..data.detection import is_detection_dataset

    if not is_detection_dataset(loaders.name):
        return _Task(False, None, None)
    from ..detection.head import detector_spec, yolo_loss

    spec = detector_spec(model)
    if config.act == "nq":
        raise ValueError(
            "act='nq' cannot train a detector: NQ's σ calibration selects epochs by the SNN's "
            "classification accuracy; use qcfs, clipq or relu for detection"
        )
    if config.label_smoothing:
        raise ValueError(f"label_smoothing={config.label_smoothing} is a classification setting; use 0 for detection")  # fmt: skip
    return _Task(True, lambda out, y: yolo_loss(out, y, spec), spec)


def _shard(loader: Any, rt: Runtime) -> Any:
    """This rank's rows of ``loader`` (the loader itself when single or None)."""
    if loader is None or not rt.distributed:
        return loader
    return ShardedLoader(loader, rt.rank, rt.world_size)


def _weight_spread(model: nn.Module, rt: Runtime) -> float:
    """Largest difference between ranks of any parameter's sum (0.0: identical weights)."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(rt.world_size)]
    dist.all_gather(gathered, sums)
    stacked = torch.stack(gathered)
    return float((stacked.max(0).values - stacked.min(0).values).max())


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"
