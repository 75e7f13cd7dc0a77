"""Neuron steps through `torch.compile`: one fused pass per step instead of several.

A neuron's `kernel` (see `ann2snn.nn.neurons`) is a chain of elementwise in-place ops. Run
eagerly each op is a pass over the layer's ``[B, ...]`` state; compiled, inductor emits
one loop (C++ on the CPU, Triton on the GPU) for the whole step, bit-identical to the
eager ops.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["compile_unavailable", "compiled_kernel", "flat_views"]


def _dense(t: Tensor) -> bool:
    """Whether ``t`` covers its storage densely (contiguous or channels_last)."""
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def flat_views(v: Tensor, args: tuple) -> tuple | None:
    """``args`` with every tensor of v's shape replaced by a 1-D view of its storage.

    Elementwise kernels (and reductions such as the QCFS backward's dot products) do not
    care about rank or layout as long as all operands share one dense layout, and 1-D
    operands let one compiled graph serve conv ``[B, C, H, W]`` (either layout) and
    linear ``[B, F]`` layers. None when the layouts differ (the caller then works on the
    tensors as they are).
    """
    if not _dense(v):
        return None
    flat = []
    for a in args:
        if isinstance(a, Tensor) and a.dim() > 0:
            if a.shape != v.shape or a.stride() != v.stride():
                return None
            # detach(): the same storage, but no view base for torch.compile to guard on
            # (a guard on the base's rank would recompile per rank again).
            a = a.as_strided((a.numel(),), (1,)).detach()  # keeps a's storage offset
        flat.append(a)
    return tuple(flat)


@functools.cache
def compiled_kernel(kernel: Callable) -> Callable:
    """`torch.compile` of a neuron kernel, built once per kernel and process.

    ``dynamic=True``: one graph for every batch size, and the CIF cap γ·t (an int that
    grows every wake step) stays a symbol instead of causing a recompile per step.
    """
    return torch.compile(kernel, dynamic=True, fullgraph=True)


def compile_unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why ``compiled=True`` neurons cannot run on ``device``, or None if they can.

    torch.compile generates C++ on the CPU, so it needs a C++ compiler there.
    """
    if torch.device(device).type != "cpu":
        return None
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if any(n and shutil.which(n) for n in names):
        return None
    return (
        "compiled=True needs a C++ compiler for torch.compile on the CPU, and none was "
        "found (looked for $CXX, g++, c++, clang++); install one (e.g. apt-get install "
        "g++) or leave compiled=False (same results, more passes per step)"
    )
