"""The pieces of one epoch: seeding, SGD parameter groups, the learning-rate schedule, one
training pass and one evaluation pass. They work with any ``nn.Module`` and any iterable of
``(x, y)`` batches."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._progress import ProgressBar
from ..nn.activations import THRESHOLD_PARAM_NAMES
from ..nn.network import device_of
from .config import TrainConfig
from .distributed import Runtime, all_sum

__all__ = ["Scores", "seed_everything", "param_groups", "lr_at", "train_one_epoch", "evaluate"]


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
            f"training loss is {mean_loss}; every complete epoch before this one is saved. A "
            "resumed run keeps its recipe, so to train with a lower lr (or warmup_epochs) "
            "start a new run in another out_dir, e.g. from the saved weights with "
            "init=<out_dir>/last.safetensors (CLI: --init)"
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
