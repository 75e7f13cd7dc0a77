"""Setting a run up: where it computes (`Placement`, resolved once), its data, the model
it trains (built, or the user's, prepared), its first thresholds, and the optimizer and
(maybe compiled, maybe distributed) step (`prepare_training`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._io import sha256_file
from .._util import resolve_device
from ..conversion.preparation import is_prepared, prepare
from ..conversion.thresholds import init_thresholds
from ..data import create_loaders
from ..models import create_model
from ..models.external import load_pretrained
from ..nn.activations import clamp_thresholds_, is_quantized_activation
from .config import TrainConfig
from .distributed import Runtime, ShardedLoader, rank_device
from .steps import Scores, param_groups, train_one_epoch

__all__ = [
    "Placement",
    "TrainingSetup",
    "prepare_training",
    "build_data",
    "source_model",
    "initialise",
    "check_loaders",
    "shard",
    "length",
]


class Placement(NamedTuple):
    """Where and how a run computes, resolved once from its config: the device, bf16
    autocast or not, the memory layout and the ``torch.compile`` mode (None: eager)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile_mode: str | None

    @classmethod
    def resolve(cls, config: TrainConfig) -> Placement:
        device = resolve_device("device", config.device)
        cuda = device.type == "cuda"
        if cuda:
            # Fixed input shapes every step: let cuDNN time its algorithms once, keep the best.
            torch.backends.cudnn.benchmark = True
        amp = config.amp == "bf16" or (config.amp == "auto" and cuda)
        # channels_last on every device: on a 2-core CPU it trained the cnn 1.47× and
        # resnet20 1.2× faster than NCHW (pooling and BatchNorm have vectorised NHWC kernels).
        channels_last = True if config.channels_last == "auto" else bool(config.channels_last)
        if config.compile is False or (config.compile == "auto" and not cuda):
            compile_mode = None
        else:
            compile_mode = "default" if config.compile in ("auto", True) else str(config.compile)
        return cls(device, torch.bfloat16 if amp else None, channels_last, compile_mode)


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
        return train_one_epoch(
            self.step_model,
            loader,
            self.optimizer,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            runtime=self.ranks,
            **kwargs,
        )


def prepare_training(
    model: nn.Module,
    config: TrainConfig,
    runtime: Runtime | None = None,
    placement: Placement | None = None,
) -> TrainingSetup:
    """Move ``model`` to the run's device and layout and build its SGD and (on CUDA) its
    compiled step exactly as `train` does; the benchmarks time this same setup. With a
    distributed ``runtime`` the step runs through ``DistributedDataParallel``.
    ``placement`` (default: resolved from ``config``) says where and how."""
    placement = placement or Placement.resolve(config)
    runtime = runtime or Runtime()
    device = rank_device(placement.device, runtime)
    amp_dtype, channels_last, compile_mode = placement[1:]
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


_LOADER_FIELDS = ("train", "val", "test", "num_classes", "in_channels", "image_size", "name")


def check_loaders(loaders: Any) -> None:
    missing = [f for f in _LOADER_FIELDS if not hasattr(loaders, f)]
    if missing:
        raise TypeError(
            f"loaders: {type(loaders).__name__} lacks {', '.join(missing)}; pass an "
            "ann2snn.data.Loaders (or an object with the same fields)"
        )


def source_model(
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


def initialise(
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
        info.update(
            path=str(config.init),
            sha256=sha256_file(config.init),
            loaded=len(report["loaded"]),
            adapted=report["adapted"],
            skipped=report["skipped"],
        )
    if (config.init or prepared) and "init_threshold" not in config.act_kwargs:
        val = loaders.val if loaders.val is not None and length(loaders.val) else None
        data, split = (val, "validation") if val is not None else (loaders.train, "training")
        calibrated = init_thresholds(model, data, batches=10)
        model.load_state_dict(calibrated.state_dict())
        info["thresholds"] = f"99.9th percentile of each ReLU on 10 {split} batches"
    return info or None


def shard(loader: Any, rt: Runtime) -> Any:
    """This rank's rows of ``loader`` (the loader itself when single or None)."""
    if loader is None or not rt.distributed:
        return loader
    return ShardedLoader(loader, rt.rank, rt.world_size)


def length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def build_data(config: TrainConfig, loaders: Any, device: torch.device, rt: Runtime) -> tuple:
    """(the run's `Loaders`, this rank's train, val and test batches): ``loaders`` as given,
    else the dataset the config names. Each rank trains and evaluates on its rows of every
    global batch; hooks (NQ's σ calibration) see the whole splits, on the primary rank."""
    if loaders is None:
        loaders = create_loaders(config.dataset, device=device, **config.loader_kwargs())
    check_loaders(loaders)
    return (loaders, *(shard(d, rt) for d in (loaders.train, loaders.val, loaders.test)))
