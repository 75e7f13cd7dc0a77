"""Thresholds from data: the percentile of what a layer emits on calibration images.

Used twice: `ann2snn.convert` gives the neurons that replace plain ReLUs the 99.9th
percentile of their ReLU's outputs as θ, and `ann2snn.prepare` / `init_thresholds`
start each new quantized activation's λ at the same percentile of the ReLU it replaces
(a sensible λ for fine-tuning a pretrained ANN). Calibration data is the validation
split (or any images the user passes), never the test split.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import check_batch, percentile_value
from ..nn.activations import is_quantized_activation

__all__ = ["iter_inputs", "percentile", "record_percentiles", "init_thresholds"]

# Values kept per site and batch: the percentile barely moves under subsampling.
_SAMPLES_PER_BATCH = 200_000


def iter_inputs(data: Any, limit: int) -> Iterator[Tensor]:
    """Inputs from a DataLoader of (x, y)/x, a tensor, or an (x, y) pair; at most ``limit``
    batches."""
    if isinstance(data, Tensor):
        yield check_batch(data, 0)
        return
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], Tensor):
        yield check_batch(data[0], 0)
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"calibration: expected a DataLoader, a tensor or an (x, y) pair, got "
            f"{type(data).__name__}"
        )
    for i, batch in enumerate(data):
        if i >= limit:
            break
        yield check_batch(batch[0] if isinstance(batch, tuple | list) else batch, i)


def percentile(values: Tensor, q: float) -> float:
    """q-th percentile (0..100) of a 1-D tensor by nearest rank, without
    ``torch.quantile``'s size limit."""
    # Nearest rank ceil(q/100·n); the relative nudge undoes float noise such as
    # 99.9/100·1000 = 999.0000000000001, which would otherwise pick the rank above.
    rank = q / 100.0 * values.numel()
    k = max(1, min(values.numel(), math.ceil(rank * (1 - 1e-12))))
    return float(values.float().kthvalue(k).values)


@torch.no_grad()
def record_percentiles(
    run: Callable[[Tensor], Any],
    sites: list[nn.Module],
    data: Any,
    q: float,
    batches: int,
    device: torch.device,
    replace: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> list[float]:
    """The ``q``-th percentile of each site's output while ``run`` goes over ``data``.

    ``replace(site, input)``, if given, is what each site computes during the recording
    (e.g. the ReLU a new quantized activation replaces), so later sites see the source
    network's values. Raises ValueError if ``data`` yields no batch.
    """
    samples: dict[int, list[Tensor]] = {id(s): [] for s in sites}
    gen = torch.Generator().manual_seed(0)

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if replace is not None:
            out = replace(mod, inp[0])
        flat = out.detach().flatten().float().cpu()
        if flat.numel() > _SAMPLES_PER_BATCH:
            flat = flat[torch.randint(flat.numel(), (_SAMPLES_PER_BATCH,), generator=gen)]
        samples[id(mod)].append(flat)
        return out if replace is not None else None

    handles = [s.register_forward_hook(hook) for s in sites]
    try:
        seen = 0
        for x in iter_inputs(data, batches):
            run(x.to(device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("calibration data yielded no batches")
    return [percentile(torch.cat(samples[id(s)]), q) for s in sites]


def init_thresholds(
    model: nn.Module,
    data: Any,
    *,
    percentile: float = 99.9,
    batches: int = 10,
    caps: dict[str, float] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose quantized activations start at λ = the
    ``percentile`` of the ReLU they quantize, measured on ``data`` (the model runs
    unquantized, every activation as a ReLU, so each site sees the source network's
    values). Activations without ``set_threshold`` (fixed range, e.g. clip-quant) are
    left as they are. ``caps`` bounds λ per activation name (a ReLU6 site: 6).

    The model runs in eval mode (BatchNorm running statistics are not updated).
    """
    percentile_value("percentile", percentile)
    out = copy.deepcopy(model)
    named = [
        (name, m)
        for name, m in out.named_modules()
        if is_quantized_activation(m) and callable(getattr(m, "set_threshold", None))
    ]
    if not named:
        return out
    caps = caps or {}
    device = next((p.device for p in out.parameters()), torch.device("cpu"))
    was_training = out.training
    out.eval()

    def as_relu(site: nn.Module, z: Tensor) -> Tensor:
        cap = caps_by_id.get(id(site))
        return F.relu(z) if cap is None else z.clamp(0.0, cap)

    caps_by_id = {id(m): caps[name] for name, m in named if name in caps}
    values = record_percentiles(
        out, [m for _, m in named], data, percentile, batches, device, replace=as_relu
    )
    for (name, m), value in zip(named, values):
        # A dead site (all outputs 0) keeps its default λ: nothing to learn a scale from.
        if value > 0:
            m.set_threshold(min(value, caps.get(name, math.inf)))
    out.train(was_training)
    return out
