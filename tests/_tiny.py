"""A tiny model and tiny loaders for the checkpoint/train tests.

``tiny`` and ``tiny_wide`` are registered in the model zoo (`ann2snn.register_model`), so
`ann2snn.load` rebuilds them from a record; the loaders go to ``train(..., loaders=...)``
(see `train_tiny`): the tests need no dataset files and run in seconds.

The fake training loader deliberately draws from the *global* torch, NumPy and Python
generators (shuffle, flips, jitter), so a resumed run only reproduces an uninterrupted
one if all three RNG states were saved and restored.
"""

from __future__ import annotations

import random
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import ann2snn
from ann2snn.nn.activations import create_activation

IMAGE = 8  # side of the synthetic images
CLASSES = 4


class TinyNet(nn.Module):
    """conv(3→c) → BN → act → avgpool2 → flatten → Linear; logits (B, num_classes)."""

    def __init__(self, num_classes=CLASSES, in_channels=3, act="qcfs", levels=4, pool="avg",
                 image_size=IMAGE, width=6, **act_kwargs):  # fmt: skip
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),  # (B, C, H, W) -> (B, w, H, W)
            nn.BatchNorm2d(width),
            create_activation(act, levels, **act_kwargs),
            nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2),  # -> (B, w, H/2, W/2)
        )
        self.head = nn.Linear(width * (image_size // 2) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


@ann2snn.register_model
def tiny(**kwargs) -> nn.Module:
    return TinyNet(**kwargs)


@ann2snn.register_model
def tiny_wide(**kwargs) -> nn.Module:
    return TinyNet(width=8, **kwargs)


class TinyLoader:
    """Batches of fixed tensors with the `ann2snn.data` loader interface.

    ``train=True``: shuffled with NumPy's global RNG, random flips from torch's global RNG
    and a tiny brightness jitter from Python's ``random``. ``slow_from_epoch``: from that
    (0-based) epoch on, touch ``marker`` after the first batch and sleep ``delay`` s per
    batch, so a test can kill the process in the middle of that epoch.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, train: bool,
                 slow_from_epoch: int | None = None, marker: str | None = None,
                 delay: float = 0.5):  # fmt: skip
        self.x, self.y, self.batch_size, self.train = x, y, batch_size, train
        self.slow_from_epoch, self.marker, self.delay = slow_from_epoch, marker, delay
        self.epoch = 0

    @property
    def dataset_size(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        n = len(self.x)
        order = torch.from_numpy(np.random.permutation(n)) if self.train else torch.arange(n)
        slow = self.slow_from_epoch is not None and self.epoch >= self.slow_from_epoch
        for i, s in enumerate(range(0, n, self.batch_size)):
            idx = order[s : s + self.batch_size]
            x, y = self.x[idx], self.y[idx]
            if self.train:
                flip = torch.rand(len(idx)) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x) + 0.01 * random.random()
            yield x, y
            if slow:
                if i == 0 and self.marker:
                    Path(self.marker).write_text(str(self.epoch))
                time.sleep(self.delay)


def make_loaders(batch_size=16, n_train=96, n_eval=32, val_fraction=0.1, **slow):
    """Loaders with the fields of `ann2snn.data.Loaders`; the data is fixed by a seed."""
    g = torch.Generator().manual_seed(1234)

    def split(n):
        y = torch.randint(0, CLASSES, (n,), generator=g)
        # Class-dependent mean so the task is learnable: (n, 3, IMAGE, IMAGE).
        x = torch.randn(n, 3, IMAGE, IMAGE, generator=g) + y.view(-1, 1, 1, 1) * 0.5
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_eval), split(n_eval)
    if val_fraction == 0:
        xv, yv = xv[:0], yv[:0]
    return types.SimpleNamespace(
        train=TinyLoader(xt, yt, batch_size, True, **slow),
        val=TinyLoader(xv, yv, batch_size, False),
        test=TinyLoader(xs, ys, batch_size, False),
        num_classes=CLASSES,
        in_channels=3,
        image_size=IMAGE,
        name="synthetic",
    )


def train_tiny(config, hooks=None, slow=None, **kwargs):
    """`ann2snn.train` on the tiny loaders (``slow``: see `TinyLoader`)."""
    loaders = make_loaders(
        batch_size=config.batch_size, val_fraction=config.val_fraction, **(slow or {})
    )
    return ann2snn.train(config, hooks, loaders=loaders, **kwargs)
