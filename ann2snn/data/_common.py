"""What every dataset shares: the `Loaders` record, the loader base with its per-epoch
seeding, where datasets are looked for, and the not-found error."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "DatasetNotFoundError",
    "Loaders",
    "EpochLoader",
    "epoch_generator",
    "data_roots",
    "dataset_not_found",
    "cache_dir",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset was found nowhere; the message lists every place looked and how to get it."""


@dataclass
class Loaders:
    """The three splits of one dataset plus the facts a model needs to be built for it."""

    train: Iterable[tuple[Tensor, Tensor]]
    val: Iterable[tuple[Tensor, Tensor]]
    test: Iterable[tuple[Tensor, Tensor]]
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    mean: tuple[float, ...] = ()  # the normalisation applied, to undo it (plots, encoders)
    std: tuple[float, ...] = ()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ann2snn"


def data_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders searched: ``data_dir`` alone when given (never another copy behind the
    user's back), else ``$ANN2SNN_DATA`` if set."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("ANN2SNN_DATA")
    return [Path(env).expanduser()] if env else []


def dataset_not_found(what: str, looked: list[str], how: str) -> DatasetNotFoundError:
    places = "".join(f"\n  - {p}" for p in looked)
    return DatasetNotFoundError(f"{what} not found. Looked in:{places}\nTo get it: {how}")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's shuffle and augmentation (seeded by both)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))


class EpochLoader:
    """What both loaders share: ``len``, ``dataset_size``, ``set_epoch``; ``iter`` runs the
    current epoch and moves to the next."""

    batch_size: int
    epoch: int = 0

    @property
    def dataset_size(self) -> int:
        return len(self.indices)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return math.ceil(self.dataset_size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s order and augmentation."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError
