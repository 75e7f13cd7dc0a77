"""YOLO-style single-scale detection: head layout, target assignment, loss, decoding + NMS.

The detector's last layer is a plain conv (no activation) whose output ``[B, A·(5+C), S, S]``
holds, per grid cell and anchor, ``(tx, ty, tw, th, objectness, class logits...)`` as in
YOLOv2 (Redmon & Farhadi 2017; the CASC paper converts single-scale YOLO detectors of this
kind). Everything nonlinear about boxes — sigmoid offsets, exponential sizes, scores, NMS —
happens *after* the network, on its output. So a converted detector is read exactly like a
converted classifier: its head output averaged over the wake steps (the regression readout)
is decoded at every t.

Boxes are ``(x1, y1, x2, y2)`` in input pixels. Targets travel as one padded tensor
``[B, N, 5]`` of ``(class, x1, y1, x2, y2)`` rows, class −1 for padding, so detection batches
are plain tensors like classification labels (device moves, sharding, resume all unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import list_models
from ..models.yolo import YoloSpec

__all__ = [
    "YoloSpec",
    "detector_spec",
    "split_head",
    "assign_targets",
    "yolo_loss",
    "decode",
    "targets_to_list",
    "kmeans_anchors",
    "Assignment",
]


def detector_spec(model: nn.Module) -> YoloSpec:
    """The `YoloSpec` a detector carries (``model.yolo_spec``); a clear error for a classifier."""
    spec = getattr(model, "yolo_spec", None)
    if not isinstance(spec, YoloSpec):
        dets = [m for m in list_models() if m.startswith("yolo")]
        raise ValueError(
            f"model {type(model).__name__} is not a detector (it has no yolo_spec); detection "
            f"needs one of: {', '.join(dets)}"
        )
    return spec


def split_head(out: Tensor, spec: YoloSpec) -> Tensor:
    """``[B, A·(5+C), S, S]`` → ``[B, A, S, S, 5+C]`` (fp32)."""
    b, c, h, w = out.shape
    if c != spec.channels:
        raise ValueError(f"head output has {c} channels, the spec needs {spec.channels}")
    return out.float().view(b, spec.num_anchors, 5 + spec.num_classes, h, w).permute(0, 1, 3, 4, 2)


def _grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    gy, gx = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return gx.float(), gy.float()  # [S, S] each


def _boxes(p: Tensor, spec: YoloSpec) -> Tensor:
    """Decoded boxes ``[B, A, S, S, 4]`` (x1, y1, x2, y2 pixels) from split head ``p``."""
    _, a, h, w, _ = p.shape
    gx, gy = _grid(h, w, p.device)
    anchors = torch.tensor(spec.anchors, device=p.device, dtype=torch.float32).view(1, a, 1, 1, 2)
    cx = (torch.sigmoid(p[..., 0]) + gx) * spec.stride
    cy = (torch.sigmoid(p[..., 1]) + gy) * spec.stride
    # exp clamped: an untrained head must not produce inf boxes.
    wh = torch.exp(p[..., 2:4].clamp(max=8.0)) * anchors
    return torch.stack(
        (cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2), -1
    )


@dataclass
class Assignment:
    """Positive (image, anchor, row, col) slots and what each should predict."""

    b: Tensor  # [P] image index
    a: Tensor  # [P] anchor index
    gy: Tensor  # [P] grid row
    gx: Tensor  # [P] grid column
    txy: Tensor  # [P, 2] centre offset in the cell, in (0, 1)
    twh: Tensor  # [P, 2] log(size / anchor)
    cls: Tensor  # [P] class
    scale: Tensor  # [P] 2 − box area / image area (small boxes weigh more)


def assign_targets(y: Tensor, spec: YoloSpec, grid: tuple[int, int]) -> Assignment:
    """Each ground-truth box goes to the cell holding its centre and to the anchor whose
    shape overlaps it best (IoU of centred boxes), as in YOLOv2. ``y``: ``[B, N, 5]``."""
    h, w = grid
    valid = y[..., 0] >= 0
    b = valid.nonzero()[:, 0]
    t = y[valid].float()  # [P, 5]
    cls = t[:, 0].long()
    x1, y1, x2, y2 = t[:, 1], t[:, 2], t[:, 3], t[:, 4]
    bw, bh = (x2 - x1).clamp(min=1e-3), (y2 - y1).clamp(min=1e-3)
    cx, cy = (x1 + x2) / 2 / spec.stride, (y1 + y2) / 2 / spec.stride
    gx, gy = cx.floor().clamp(0, w - 1), cy.floor().clamp(0, h - 1)
    anchors = torch.tensor(spec.anchors, device=y.device, dtype=torch.float32)  # [A, 2]
    inter = torch.minimum(bw[:, None], anchors[:, 0]) * torch.minimum(bh[:, None], anchors[:, 1])
    iou = inter / (bw[:, None] * bh[:, None] + anchors[:, 0] * anchors[:, 1] - inter)
    a = iou.argmax(1)
    txy = torch.stack((cx - gx, cy - gy), 1).clamp(1e-4, 1 - 1e-4)
    twh = torch.stack((torch.log(bw / anchors[a, 0]), torch.log(bh / anchors[a, 1])), 1)
    area = h * w * spec.stride**2
    return Assignment(b, a, gy.long(), gx.long(), txy, twh, cls, 2.0 - bw * bh / area)


def yolo_loss(out: Tensor, y: Tensor, spec: YoloSpec, ignore_iou: float = 0.5) -> Tensor:
    """YOLOv2-style loss, summed over boxes and divided by the batch size.

    Positives: BCE on the sigmoid centre offsets, squared error on log sizes (weighted by
    2 − relative area), BCE objectness towards 1 and cross-entropy over classes. Every other
    slot: BCE objectness towards 0, except slots whose decoded box already overlaps a ground
    truth by more than ``ignore_iou`` (not penalised). ``out``: ``[B, A·(5+C), S, S]``;
    ``y``: ``[B, N, 5]`` padded targets.
    """
    p = split_head(out, spec)  # [B, A, S, S, 5+C]
    bsz, _, h, w, _ = p.shape
    asg = assign_targets(y, spec, (h, w))
    weight = torch.ones(p.shape[:4], device=p.device)
    from torchvision.ops import box_iou  # lazy: torchvision.ops loads torch._dynamo (~1 s)

    with torch.no_grad():
        boxes = _boxes(p.detach(), spec)  # [B, A, S, S, 4]
        for i in range(bsz):
            gt = y[i][y[i, :, 0] >= 0, 1:].float()
            if len(gt):
                best = box_iou(boxes[i].reshape(-1, 4), gt).max(1).values
                weight[i].view(-1)[best > ignore_iou] = 0.0
    target = torch.zeros(p.shape[:4], device=p.device)
    pos = (asg.b, asg.a, asg.gy, asg.gx)
    target[pos], weight[pos] = 1.0, 1.0
    loss_obj = F.binary_cross_entropy_with_logits(p[..., 4], target, weight, reduction="sum")
    if len(asg.b) == 0:
        return loss_obj / bsz
    q = p[pos]  # [P, 5+C]
    loss_xy = F.binary_cross_entropy_with_logits(q[:, :2], asg.txy, reduction="none").sum(1)
    loss_wh = ((q[:, 2:4] - asg.twh) ** 2).sum(1)
    loss_box = ((loss_xy + loss_wh) * asg.scale).sum()
    loss_cls = F.cross_entropy(q[:, 5:], asg.cls, reduction="sum")
    return (loss_box + loss_obj + loss_cls) / bsz


@torch.no_grad()
def decode(
    out: Tensor,
    spec: YoloSpec,
    conf: float = 0.01,
    iou: float = 0.5,
    max_det: int = 100,
    pre_nms: int = 1000,
) -> list[dict[str, Tensor]]:
    """Detections per image from a head output ``[B, A·(5+C), S, S]`` (an ANN's, or an
    SNN's mean over wake steps): score = σ(objectness)·softmax(class), the best class per
    slot; ``score > conf``; the top ``pre_nms``; per-class NMS at ``iou``; at most
    ``max_det``. Boxes are clipped to the input. Returns ``[{"boxes" [K,4], "scores" [K],
    "labels" [K]}]`` (torchmetrics' format)."""
    p = split_head(out, spec)
    bsz, _, h, w, _ = p.shape
    boxes = _boxes(p, spec).clamp(min=0)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(max=w * spec.stride)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(max=h * spec.stride)
    scores, labels = (torch.sigmoid(p[..., 4:5]) * torch.softmax(p[..., 5:], -1)).max(-1)
    from torchvision.ops import batched_nms  # lazy: torchvision.ops loads torch._dynamo (~1 s)

    result = []
    for i in range(bsz):
        s, lab, bx = scores[i].reshape(-1), labels[i].reshape(-1), boxes[i].reshape(-1, 4)
        keep = s > conf
        s, lab, bx = s[keep], lab[keep], bx[keep]
        if len(s) > pre_nms:
            top = s.topk(pre_nms).indices
            s, lab, bx = s[top], lab[top], bx[top]
        keep = batched_nms(bx, s, lab, iou)[:max_det]
        result.append({"boxes": bx[keep], "scores": s[keep], "labels": lab[keep]})
    return result


def targets_to_list(y: Tensor) -> list[dict[str, Tensor]]:
    """Padded targets ``[B, N, 5]`` → ``[{"boxes" [K,4], "labels" [K]}]`` per image."""
    out = []
    for row in y:
        row = row[row[:, 0] >= 0]
        out.append({"boxes": row[:, 1:].float(), "labels": row[:, 0].long()})
    return out


def kmeans_anchors(wh: Tensor, k: int, iters: int = 50, seed: int = 0) -> list[tuple[float, float]]:
    """k anchors (w, h) from box sizes ``wh [N, 2]`` by k-means with 1 − IoU as distance
    (YOLOv2's recipe), sorted by area."""

    def iou(centres: Tensor) -> Tensor:  # [N, k] IoU of centred boxes
        inter = torch.minimum(wh[:, None, 0], centres[:, 0]) * torch.minimum(
            wh[:, None, 1], centres[:, 1]
        )
        return inter / (wh[:, None].prod(-1) + centres.prod(-1) - inter)

    # Farthest-point start (a random box, then each time the box least like any centre):
    # random starts can pick one shape twice and leave a cluster empty for good.
    g = torch.Generator().manual_seed(seed)
    centres = wh[torch.randint(len(wh), (1,), generator=g)].clone()
    while len(centres) < k:
        centres = torch.cat([centres, wh[iou(centres).max(1).values.argmin()][None]])
    for _ in range(iters):
        nearest = iou(centres).argmax(1)
        for j in range(k):
            if (nearest == j).any():
                centres[j] = wh[nearest == j].median(0).values
    order = centres.prod(1).argsort()
    return [(round(float(w), 1), round(float(h), 1)) for w, h in centres[order]]
