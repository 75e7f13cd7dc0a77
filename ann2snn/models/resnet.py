"""CIFAR-style ResNets used by QCFS (Bu et al., ICLR 2022), NQ and GN.

* ``resnet18`` / ``resnet34``: the ResNet of He et al. (CVPR 2016) with a CIFAR stem
  (3×3 conv, stride 1, no max-pool), BasicBlocks [2, 2, 2, 2] / [3, 4, 6, 3] at widths
  64/128/256/512, global average pooling and one Linear (methods.md §1.3).
* ``resnet20``: the standard CIFAR ResNet-20 of He et al. (16/32/64 channels, 3 stages
  × 3 BasicBlocks) with 1×1 conv + BN projection shortcuts where the shape changes.

Every ReLU is an activation module built by name. In a BasicBlock the activation after
the residual addition is its own module (``act2``): that is where the spiking neuron
sits after conversion (methods.md §0 item 5).
"""

from __future__ import annotations

from torch import Tensor, nn

from ._blocks import ActFactory, activation_factory, check_pool, init_weights
from ._registry import register_model

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet20", "resnet34"]


class BasicBlock(nn.Module):
    """conv3×3-BN-act-conv3×3-BN, add the shortcut, then a separate activation.

    The shortcut is identity when shape is kept, else 1×1 conv (stride) + BN.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, make_act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_act()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_act()  # post-addition activation

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, in_planes, H, W) -> (N, planes, H/stride, W/stride)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    """Stem (3×3 conv-BN-act) → BasicBlock stages → global avg-pool → Flatten → Linear.

    Args:
        blocks: BasicBlocks per stage, e.g. (2, 2, 2, 2).
        widths: output channels per stage, e.g. (64, 128, 256, 512); the stem has ``widths[0]``.
        make_act: zero-argument factory; called once per activation site.
        num_classes: outputs of the final Linear (no activation after it).
        in_channels: input image channels.

    Stage i > 0 downsamples by 2 in its first block. Submodules: ``stem``, ``layer1`` …
    ``layerK``, ``avgpool``, ``flatten``, ``fc``.
    """

    def __init__(
        self,
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        make_act: ActFactory,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError("blocks and widths must have the same length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            make_act(),
        )  # (N, in_channels, H, W) -> (N, widths[0], H, W)
        self.num_stages = len(blocks)
        in_planes = widths[0]
        for i, (count, planes) in enumerate(zip(blocks, widths)):
            stage: list[nn.Module] = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(in_planes, planes, stride, make_act))
                in_planes = planes
            # stage i: (N, ·, H_i, W_i) -> (N, planes, H_i / 2^(i>0), W_i / 2^(i>0))
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # (N, C, h, w) -> (N, C, 1, 1)
        self.flatten = nn.Flatten()  # -> (N, C)
        self.fc = nn.Linear(in_planes, num_classes)  # logits
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, in_channels, H, W) -> logits (N, num_classes)
        x = self.stem(x)
        for i in range(self.num_stages):  # fixed at construction: traceable
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def _build(
    blocks: tuple[int, ...],
    widths: tuple[int, ...],
    num_classes: int,
    in_channels: int,
    act: str,
    levels: int,
    pool: str,
    **act_kwargs,
) -> ResNet:
    check_pool(pool)  # accepted for a uniform API; these stems have no pooling layer
    return ResNet(
        blocks,
        widths,
        activation_factory(act, levels, **act_kwargs),
        num_classes=num_classes,
        in_channels=in_channels,
    )


@register_model
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    **act_kwargs,
) -> ResNet:
    """ResNet-18, CIFAR stem, BasicBlocks [2, 2, 2, 2] at 64/128/256/512 (17 activations)."""
    return _build(
        (2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, act, levels, pool, **act_kwargs
    )


@register_model
def resnet34(
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    **act_kwargs,
) -> ResNet:
    """ResNet-34, CIFAR stem, BasicBlocks [3, 4, 6, 3] at 64/128/256/512 (33 activations)."""
    return _build(
        (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels, act, levels, pool, **act_kwargs
    )


@register_model
def resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    **act_kwargs,
) -> ResNet:
    """CIFAR ResNet-20: 16/32/64 channels, 3 stages × 3 BasicBlocks (19 activations)."""
    return _build(
        (3, 3, 3), (16, 32, 64), num_classes, in_channels, act, levels, pool, **act_kwargs
    )
