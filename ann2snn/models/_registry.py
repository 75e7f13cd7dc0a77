"""Model registry: `register_model`, `create_model`, `list_models` (timm-style).

A model builder is a function registered under its own ``__name__``. Every builder takes
the same keyword arguments (``num_classes``, ``in_channels``, ``act``, ``levels``, ``pool``,
``image_size`` and extra activation kwargs) so callers can switch architectures by name.
Builders never receive an activation instance: they build one fresh activation per site
(see `_blocks.activation_factory`), so each layer owns its own threshold.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._blocks import check_pool
from .external import build_external, is_external

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model builder under its function name (e.g. ``vgg16``)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_MODELS)


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    **act_kwargs,
) -> nn.Module:
    """Build a registered model, e.g. ``create_model("vgg16", num_classes=100, act="qcfs")``,
    or one from outside the zoo: ``"torchvision:resnet18"``, ``"timm:resnet18"`` or a
    builder ``"package.module:function"``, made convertible by `ann2snn.prepare` with
    ``act``, ``levels``, ``pool`` and ``act_kwargs`` (see `ann2snn.models.external`).

    ``act``/``levels``/``act_kwargs`` go to `ann2snn.nn.activations.create_activation` once
    per activation site. ``pool`` ("avg" or "max") picks the pooling of VGG/CNN models;
    ResNets validate it but have no pooling in the stem. ``image_size`` is the (square)
    input side, used to size the first Linear of models that flatten a feature map.
    Builder-specific keywords (``dropout`` of ``vgg16``) travel through ``act_kwargs``.
    """
    check_pool(pool)
    kwargs = dict(
        num_classes=_check_positive_int("num_classes", num_classes),
        in_channels=_check_positive_int("in_channels", in_channels),
        act=act,
        levels=levels,
        pool=pool,
        image_size=_check_positive_int("image_size", image_size),
        **act_kwargs,
    )
    if is_external(name):
        return build_external(name, **kwargs)
    try:
        builder = _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(list_models())}, or "
            "torchvision:NAME, timm:NAME, package.module:function"
        ) from None
    return builder(**kwargs)
