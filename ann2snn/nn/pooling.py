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

import torch.nn.functional as F
from torch import Tensor, nn

from .state import Stateful, state_dtype

__all__ = ["LIPool"]


class LIPool(Stateful):
    """Lateral-inhibition max-pool for spiking networks; a drop-in for ``nn.MaxPool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self.sum_in: Tensor | None = None
        self.sum_out: Tensor | None = None

    @classmethod
    def from_maxpool(cls, pool: nn.MaxPool2d) -> LIPool:
        """LIPool with the geometry of ``pool``."""
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    def ann_forward(self, x: Tensor) -> Tensor:
        """The max-pool this module stands for."""
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def step(self, x: Tensor) -> Tensor:
        """One step: ``x`` ``[B, C, H, W]`` → ``[B, C, H', W']``."""
        x_acc = x.to(state_dtype(x.dtype))  # running sums in fp32 (fp64 for fp64 input)
        s = x_acc if self.sum_in is None else self.sum_in + x_acc
        pooled = self.ann_forward(s)
        out = pooled if self.sum_out is None else pooled - self.sum_out
        self.sum_in, self.sum_out = s, pooled
        return out.to(x.dtype)

    def reset(self) -> None:
        self.sum_in = None
        self.sum_out = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
