"""Spiking max-pooling by lateral inhibition (LIPool, used by CASC §3.4).

A rate-coded max-pool cannot take the max of each step's spikes: the window maximum
of the *cumulative* inputs is what the ANN's max-pool computes. LIPool keeps the
running sum S of its input ``[B, C, H, W]`` and the cumulative output O
``[B, C, H', W']``; each step it emits ``maxpool(S) − O`` so that after any number of
steps the cumulative output equals the max-pool of the cumulative input. This is the
same as "emit the window's maximum running sum, then subtract it from every entry of
the window" for non-overlapping windows, and stays correct for overlapping ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LIPool"]


class LIPool(nn.Module):
    """Lateral-inhibition max-pool for spiking networks; a drop-in for ``nn.MaxPool2d``."""

    is_stateful = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self._fold: int | None = None
        self._ann_mode = False
        self.sum_in: Tensor | None = None
        self.sum_out: Tensor | None = None

    @classmethod
    def from_maxpool(cls, pool: nn.MaxPool2d) -> LIPool:
        """LIPool with the geometry of ``pool``."""
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    def _pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def step(self, x: Tensor) -> Tensor:
        """One step: ``x`` ``[B, C, H, W]`` → ``[B, C, H', W']``."""
        s = x.float() if self.sum_in is None else self.sum_in + x.float()
        pooled = self._pool(s)
        out = pooled if self.sum_out is None else pooled - self.sum_out
        self.sum_in, self.sum_out = s, pooled
        return out.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self._ann_mode:
            return self._pool(x)
        if self._fold is not None:
            xs = x.unflatten(0, (self._fold, -1))  # [T, B, C, H, W]
            return torch.stack([self.step(t) for t in xs.unbind(0)]).flatten(0, 1)
        return self.step(x)

    def reset(self) -> None:
        self.sum_in = None
        self.sum_out = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
