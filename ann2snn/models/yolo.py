"""A small single-scale YOLO-style detector (our design, after YOLOv2-tiny).

Backbone of 3×3 conv + BatchNorm + activation blocks, doubling the width after each 2×2
pool (16, 32, 64, ...), one more 3×3 block at the last width, then a 1×1 conv head with
bias and no activation: ``[B, A·(5+C), S, S]`` (`ann2snn.detection.head`). The CASC paper
converts single-scale (stride 32) YOLO detectors; here the stride follows the input:
3 pools (stride 8, an 8×8 grid) for the 64 px Fashion-MNIST scenes, 5 (stride 32) for
inputs above 128 px (VOC/COCO at 416 px: a 13×13 grid, as YOLOv2).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ._blocks import ActFactory, activation_factory, init_weights, make_pool
from ._registry import register_model

__all__ = ["TinyYOLO", "yolo_tiny", "YoloSpec", "DEFAULT_ANCHORS"]


@dataclass(frozen=True)
class YoloSpec:
    """What the head's channels mean: ``num_classes``, the grid ``stride`` (input pixels per
    cell) and the ``anchors`` as (width, height) in input pixels."""

    num_classes: int
    stride: int
    anchors: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.stride < 1 or not self.anchors:
            raise ValueError(f"YoloSpec: bad values {self!r}")
        if any(w <= 0 or h <= 0 for w, h in self.anchors):
            raise ValueError(f"YoloSpec: anchors must be positive (w, h) pairs, got {self.anchors}")

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def channels(self) -> int:
        """Output channels of the head conv: A·(5 + C)."""
        return self.num_anchors * (5 + self.num_classes)


#: Anchors as fractions of the input side. 64 px scenes: k-means (1 − IoU) on the boxes of
#: the generated Fashion-MNIST training scenes (`detection.kmeans_anchors`, 3 clusters);
#: larger inputs: YOLOv2's VOC anchors (in 13-cell units) divided by 13.
DEFAULT_ANCHORS: dict[str, tuple[tuple[float, float], ...]] = {
    "small": ((0.31, 0.31), (0.31, 0.5), (0.5, 0.56)),
    "large": ((0.102, 0.133), (0.249, 0.380), (0.402, 0.716), (0.608, 0.345), (0.830, 0.794)),
}


class TinyYOLO(nn.Module):
    """conv-BN-act blocks with ``pools`` 2×2 pools, an extra block, a 1×1 head.

    Args:
        make_act: zero-argument factory, one activation per site (pools + 2 sites).
        num_classes: object classes (no background class: objectness is separate).
        in_channels: input channels.
        pool: "avg" or "max".
        image_size: input side (square).
        pools: number of 2×2 pools (grid stride 2**pools).
        anchors: (w, h) in pixels; default `DEFAULT_ANCHORS` scaled by the input side.
    """

    def __init__(
        self,
        make_act: ActFactory,
        num_classes: int,
        in_channels: int = 3,
        pool: str = "avg",
        image_size: int = 64,
        pools: int | None = None,
        anchors: tuple[tuple[float, float], ...] | None = None,
    ):
        super().__init__()
        pools = pools if pools is not None else (3 if image_size <= 128 else 5)
        if anchors is None:
            fractions = DEFAULT_ANCHORS["small" if image_size <= 128 else "large"]
            anchors = tuple(
                (round(w * image_size, 2), round(h * image_size, 2)) for w, h in fractions
            )
        self.yolo_spec = YoloSpec(num_classes, 2**pools, tuple(tuple(a) for a in anchors))
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(pools + 1):
            c_out = 16 * 2**i
            # (N, c_in, H/2^i, W/2^i) -> (N, c_out, H/2^i, W/2^i)
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                make_act(),
            ]
            if i < pools:
                layers.append(make_pool(pool))
            c_in = c_out
        layers += [
            nn.Conv2d(c_in, c_in, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_in),
            make_act(),
        ]
        self.features = nn.Sequential(*layers)
        # (N, C, S, S) -> (N, A·(5+C), S, S): raw head, decoded outside the network.
        self.head = nn.Conv2d(c_in, self.yolo_spec.channels, 1)
        init_weights(self)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register_model
def yolo_tiny(
    num_classes: int = 20,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 64,
    pools: int | None = None,
    anchors: tuple[tuple[float, float], ...] | None = None,
    **act_kwargs,
) -> TinyYOLO:
    """Single-scale YOLO-style detector (`TinyYOLO`); train it on a detection dataset
    (``fashion-scenes``, ``voc``, ``coco``).

    QCFS/NQ thresholds start at λ = 2 unless ``init_threshold`` is given: with the
    classifiers' λ = 8 and L = 4 the post-BN activations mostly fell in the zero bin and the
    detector did not learn (Fashion-MNIST scenes, 4,000 scenes × 3 epochs, lr 0.02: mAP@0.5
    0.0 % against 3.2 % with λ = 2; at lr 0.01 the loss fell further with λ = 2)."""
    if act in ("qcfs", "nq"):
        act_kwargs.setdefault("init_threshold", 2.0)
    return TinyYOLO(
        activation_factory(act, levels, **act_kwargs),
        num_classes=num_classes,
        in_channels=in_channels,
        pool=pool,
        image_size=image_size,
        pools=pools,
        anchors=anchors,
    )
