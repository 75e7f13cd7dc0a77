"""Many processes, one run: ``torch.distributed`` as started by ``torchrun``.

`Runtime` is where a process stands: rank, world size, its device, whether it is the
primary (rank 0: the only one that writes checkpoints, reports and logs). `runtime_from_env`
reads ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and starts the
process group (NCCL on GPUs, gloo on CPUs); without it, a single-process runtime.

`ShardedLoader` splits every *global* batch of a loader between the ranks (rank r takes
rows r, r + W, …): each rank builds the same global batch from the same seed and epoch,
so the global batch — and with it the recipe's learning rate — is the one a single process
uses, and a run resumed on another number of processes sees the same batches. Evaluation
sums exact counts over the ranks (`all_sum`), so a distributed accuracy equals the
single-process one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "Runtime",
    "runtime_from_env",
    "rank_device",
    "ShardedLoader",
    "all_sum",
    "broadcast_object",
]


@dataclass(frozen=True)
class Runtime:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def runtime_from_env(device: torch.device) -> Runtime:
    """The runtime ``torchrun`` describes in the environment (starting the process group
    once), else a single process. On CUDA each rank uses ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Runtime(rank, world, local, backend)


def rank_device(device: torch.device, rt: Runtime) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a distributed CUDA run."""
    if rt.distributed and device.type == "cuda":
        return torch.device("cuda", rt.local_rank)
    return device


class ShardedLoader:
    """Rank ``rank``'s rows of every global batch of ``loader``: ``x[rank::world]``.

    A last global batch with fewer rows than ranks is dropped on every rank (a rank with
    no rows would stall the others in their gradient all-reduce). ``len``, ``set_epoch``
    and ``dataset_size`` pass through.
    """

    def __init__(self, loader: Any, rank: int, world_size: int) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset_size(self) -> int:
        return getattr(self.loader, "dataset_size", 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            if y.shape[0] < self.world_size:
                continue
            yield x[self.rank :: self.world_size], y[self.rank :: self.world_size]


def all_sum(*tensors: Tensor, rt: Runtime) -> list[Tensor]:
    """The sums of ``tensors`` over all ranks (the tensors themselves when single)."""
    if not rt.distributed:
        return list(tensors)
    out = []
    for t in tensors:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out.append(t)
    return out


def broadcast_object(obj: Any, rt: Runtime, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled by torch.distributed)."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
