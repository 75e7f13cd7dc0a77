"""Building helpers shared by the model families (private).

* `activation_factory`: validated zero-argument factory, one fresh activation per call.
* `make_pool` / `check_pool`: the ``pool="avg" | "max"`` switch.
* `pooled_size`: spatial side after a number of 2×2 ceil-mode pools.
* `init_weights`: the weight initialisation used by every model here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ann2snn.nn.activations import create_activation, list_activations

__all__ = [
    "POOL_CHOICES",
    "ActFactory",
    "activation_factory",
    "check_pool",
    "make_pool",
    "pooled_size",
    "init_weights",
]

#: Accepted values of ``pool=``.
POOL_CHOICES: tuple[str, ...] = ("avg", "max")

#: A zero-argument callable returning a NEW activation module on each call.
ActFactory = Callable[[], nn.Module]


def activation_factory(act: str, levels: int, **act_kwargs) -> ActFactory:
    """Validate ``act`` and return a factory that builds a fresh activation on each call."""
    if act not in list_activations():
        raise ValueError(
            f"unknown activation {act!r}; choose one of {', '.join(list_activations())}"
        )
    create_activation(act, levels=levels, **act_kwargs)  # fail fast on bad levels/kwargs

    def make() -> nn.Module:
        return create_activation(act, levels=levels, **act_kwargs)

    return make


def check_pool(pool: str) -> str:
    """Validate ``pool`` ("avg" or "max") and return it."""
    if pool not in POOL_CHOICES:
        raise ValueError(
            f"unknown pool {pool!r}; use pool='avg' (the conversion-friendly default) "
            f"or pool='max' (choices: {', '.join(POOL_CHOICES)})"
        )
    return pool


def make_pool(pool: str) -> nn.Module:
    """A 2×2, stride-2 pooling layer; ``ceil_mode=True`` so odd sides round up (7 → 4)."""
    if check_pool(pool) == "avg":
        return nn.AvgPool2d(2, ceil_mode=True)
    return nn.MaxPool2d(2, ceil_mode=True)


def pooled_size(image_size: int, num_pools: int) -> int:
    """Side after ``num_pools`` 2×2/stride-2 ceil-mode pools (28 → 14 → 7 → 4 → 2 → 1)."""
    size = image_size
    for _ in range(num_pools):
        size = -(-size // 2)  # ceil(size / 2)
    return size


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan-out), unit/zero BatchNorm, zero Linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
