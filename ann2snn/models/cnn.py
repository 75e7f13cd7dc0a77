"""A small CNN for quick CPU demos (Fashion-MNIST / MNIST), our own design.

Three 3×3 conv + BatchNorm + activation blocks (16, 32, 64 channels) with a 2×2 pool
after the first two, then a one-hidden-layer MLP. It follows the same conventions as the
VGG of QCFS (Bu et al., ICLR 2022): the only nonlinearities are activation modules, BN
in every conv block, no activation after the last Linear. On 28×28 inputs a training
epoch of 54k images takes roughly 23–31 s on 2 CPU cores (batch 128, SGD).
"""

from __future__ import annotations

from torch import Tensor, nn

from ._blocks import ActFactory, activation_factory, init_weights, make_pool, pooled_size
from ._registry import register_model

__all__ = ["SmallCNN", "cnn"]


class SmallCNN(nn.Module):
    """conv16-P-conv32-P-conv64 → Flatten → Linear(64·s·s → hidden) → act → Linear.

    Args:
        make_act: zero-argument factory; called once per activation site (4 sites).
        num_classes: outputs of the last Linear (no activation after it).
        in_channels: input image channels.
        pool: "avg" or "max".
        image_size: input side; s = side after two ceil-mode pools (7 for 28, 8 for 32).
        hidden: width of the hidden Linear layer.
    """

    def __init__(
        self,
        make_act: ActFactory,
        num_classes: int = 10,
        in_channels: int = 1,
        pool: str = "avg",
        image_size: int = 28,
        hidden: int = 128,
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),  # (N, C, H, W) -> (N, 16, H, W)
            nn.BatchNorm2d(16),
            make_act(),
            make_pool(pool),  # -> (N, 16, H/2, W/2)
            nn.Conv2d(16, 32, 3, padding=1, bias=False),  # -> (N, 32, H/2, W/2)
            nn.BatchNorm2d(32),
            make_act(),
            make_pool(pool),  # -> (N, 32, H/4, W/4)
            nn.Conv2d(32, 64, 3, padding=1, bias=False),  # -> (N, 64, H/4, W/4)
            nn.BatchNorm2d(64),
            make_act(),
        )
        side = pooled_size(image_size, 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, 64, s, s) -> (N, 64·s·s)
            nn.Linear(64 * side * side, hidden),
            make_act(),
            nn.Linear(hidden, num_classes),  # logits, no activation
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, in_channels, H, W) -> logits (N, num_classes)
        return self.classifier(self.features(x))


@register_model
def cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    **act_kwargs,
) -> SmallCNN:
    """Small 3-conv CNN for CPU demos (4 activations); pass ``in_channels=1, image_size=28``
    for Fashion-MNIST."""
    return SmallCNN(
        activation_factory(act, levels, **act_kwargs),
        num_classes=num_classes,
        in_channels=in_channels,
        pool=pool,
        image_size=image_size,
    )
