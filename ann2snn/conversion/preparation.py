"""`prepare`: the ANN-side transform that makes any traceable model convertible.

``prepare(model, act="qcfs", levels=4, pool="avg")`` returns a new module (the input is
never mutated) in which every ReLU-like site (``nn.ReLU``, ``F.relu``, ``torch.relu``,
``Tensor.relu``, ``clamp(min=0)``, ``nn.ReLU6``) has a fresh quantized activation of its
own (each with its own λ), and, with ``pool="avg"``, every max-pool is an average pool
of the same geometry. Train the result (`ann2snn.train(cfg, model=...)`), then
`ann2snn.convert` it. Works for torchvision's ResNets, VGGs and MobileNetV2, timm's
ResNets and a user's own models, as long as ``torch.fx`` can trace them.

The returned module is a ``torch.fx.GraphModule`` whose submodules keep the source
model's qualified names (``layer1.0.conv1``), so pretrained state dicts still match; new
activations are named after the site they replace (``layer1.0.relu``; a shared module's
later sites ``layer1.0.relu_1``; a function site ``act_relu_3``). `prepare` is
deterministic: preparing the same architecture again gives the same names, which is how
`ann2snn.load` rebuilds a prepared model from its checkpoint record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .._util import percentile_value, positive_int
from ..nn.activations import list_activations
from ..nn.network import device_of
from ._graph import NotTraceableError, capture
from .passes import PREPARE_PASSES, PassContext, run_passes
from .rules import SPIKING, UNSUPPORTED, classify
from .support import ConversionError
from .thresholds import init_thresholds

__all__ = ["prepare", "prepare_as", "is_prepared"]


def is_prepared(model: nn.Module) -> bool:
    """True for a module returned by `prepare` (it carries ``ann2snn_prepare``)."""
    return isinstance(getattr(model, "ann2snn_prepare", None), dict)


def _validate(act: str, levels: int, pool: str, percentile: float, batches: int) -> None:
    if act not in list_activations():
        raise ValueError(
            f"act: unknown activation {act!r}; choose one of {', '.join(list_activations())}"
        )
    positive_int("levels", levels)
    if pool not in ("avg", "max"):
        raise ValueError(f"pool must be 'avg' (convertible by every neuron) or 'max', got {pool!r}")
    percentile_value("percentile", percentile)
    positive_int("calibration_batches", batches)


def prepare_as(model: nn.Module, args: Mapping[str, Any]) -> nn.Module:
    """`prepare` with the arguments a prepared module carries (``ann2snn_prepare``: act,
    levels, pool, act_kwargs), as a checkpoint record stores them."""
    return prepare(model, args["act"], args["levels"], args["pool"], **args.get("act_kwargs", {}))


def prepare(
    model: nn.Module,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    *,
    calibration: Any = None,
    percentile: float = 99.9,
    calibration_batches: int = 10,
    **act_kwargs: Any,
) -> nn.Module:
    """Return a copy of ``model`` with quantized activations and conversion-friendly pooling.

    Args:
        model: any ``torch.fx``-traceable module (not modified).
        act: a registered activation (`ann2snn.list_activations`): ``"qcfs"``, ``"nq"``,
            ``"clipq"``, ``"relu"`` (one fresh ReLU per site), or your own.
        levels: L (Q for clip-quant).
        pool: ``"avg"`` turns every max-pool into an average pool of the same geometry;
            ``"max"`` keeps them (for neurons with a spiking max-pool, e.g. ``"cif"``).
        calibration: data (DataLoader, tensor or (x, y)); if given, each new activation's
            λ starts at the ``percentile`` of the ReLU it replaces, measured on
            ``calibration_batches`` batches (use the validation split). Otherwise λ is the
            activation's default (``act_kwargs["init_threshold"]``, else 8).
        act_kwargs: passed to the activation factory (e.g. ``init_threshold``).

    Raises:
        ConversionError: the model cannot be traced (naming the module), or has ops with
            no spiking equivalent (each named, with its fix) — before anything is built.
    """
    _validate(act, levels, pool, percentile, calibration_batches)
    try:
        gm = capture(model)
    except NotTraceableError as e:
        raise ConversionError(f"cannot prepare: {e}") from None
    bad = [m for m in classify(gm) if m.kind in (UNSUPPORTED, SPIKING)]
    if bad:
        lines = [f"  {m.op} at {m.name}: {m.rule.fix}" for m in bad]
        raise ConversionError(
            f"cannot prepare: {len(lines)} unsupported op(s); nothing was changed\n"
            + "\n".join(lines)
        )
    ctx = PassContext(act=act, levels=levels, pool=pool, act_kwargs=dict(act_kwargs))
    gm = run_passes(gm, PREPARE_PASSES, ctx)
    if not ctx.layers:
        raise ConversionError(
            "cannot prepare: the model has no ReLU-like activation (nn.ReLU, F.relu, "
            "clamp(min=0), ReLU6) to quantize"
        )
    # New activations are built on the CPU in the default dtype: follow the model.
    first = next(iter(model.parameters()), None)
    for name in ctx.layers:
        site = gm.get_submodule(name)
        site.to(device_of(model), dtype=first.dtype if first is not None else None)
    if calibration is not None:
        gm = init_thresholds(
            gm, calibration, percentile=percentile, batches=calibration_batches, caps=ctx.caps
        )
    gm.train(model.training)
    gm.ann2snn_prepare = {
        "act": act,
        "levels": levels,
        "pool": pool,
        "act_kwargs": dict(act_kwargs),
    }
    return gm
