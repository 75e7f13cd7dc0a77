"""VGG-16 as used by QCFS (Bu et al., ICLR 2022) and its successors NQ and GN.

Thirteen 3×3 conv + BatchNorm + activation blocks in five stages separated by 2×2
pooling, then a three-layer MLP classifier whose two hidden layers also end in an
activation (methods.md §1.3). Every ReLU of the original VGG is an activation module
built by name, so conversion only swaps those modules.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._blocks import ActFactory, activation_factory, init_weights, make_pool, pooled_size
from ._registry import register_model

__all__ = ["VGG", "VGG16_PLAN", "vgg16"]

#: Conv output channels in order; "P" marks a 2×2 pooling layer.
VGG16_PLAN: tuple[int | str, ...] = (
    64, 64, "P",
    128, 128, "P",
    256, 256, 256, "P",
    512, 512, 512, "P",
    512, 512, 512, "P",
)  # fmt: skip


class VGG(nn.Module):
    """Plain VGG: ``features`` (conv-BN-act blocks + pools) then ``classifier`` (MLP).

    Args:
        plan: conv widths with "P" for pooling, e.g. `VGG16_PLAN`.
        make_act: zero-argument factory; called once per activation site.
        num_classes: outputs of the last Linear (which has no activation after it).
        in_channels: input image channels.
        pool: "avg" or "max".
        image_size: input side, sets the first Linear's fan-in (512·s·s).
        hidden: width of the two hidden Linear layers.
        dropout: dropout probability after each hidden activation (0 = QCFS default).
    """

    def __init__(
        self,
        plan: tuple[int | str, ...],
        make_act: ActFactory,
        num_classes: int = 10,
        in_channels: int = 3,
        pool: str = "avg",
        image_size: int = 32,
        hidden: int = 4096,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in plan:
            if item == "P":
                layers.append(make_pool(pool))  # (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))
            else:
                layers += [
                    nn.Conv2d(channels, int(item), kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(int(item)),
                    make_act(),
                ]  # (N, C_in, H, W) -> (N, item, H, W)
                channels = int(item)
        self.features = nn.Sequential(*layers)

        side = pooled_size(image_size, sum(1 for item in plan if item == "P"))
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, 512, s, s) -> (N, 512·s·s)
            nn.Linear(channels * side * side, hidden),
            make_act(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            make_act(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),  # logits, no activation
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, in_channels, H, W) -> features (N, 512, s, s) -> logits (N, num_classes)
        return self.classifier(self.features(x))


@register_model
def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    dropout: float = 0.0,
    **act_kwargs,
) -> VGG:
    """VGG-16 (13 conv blocks + 2 hidden Linear, 15 activations); ``dropout`` defaults to 0."""
    return VGG(
        VGG16_PLAN,
        activation_factory(act, levels, **act_kwargs),
        num_classes=num_classes,
        in_channels=in_channels,
        pool=pool,
        image_size=image_size,
        dropout=dropout,
    )
