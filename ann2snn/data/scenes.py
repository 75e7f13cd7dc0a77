"""Fashion-MNIST scenes: a seeded multi-object detection set composed on the fly.

Each scene is a black ``size``×``size`` canvas (64 px by default) holding 1 to
``max_objects`` Fashion-MNIST items, each resized to a side drawn from ``scales``
(20–40 px; the items are 28 px) and placed at a random position; items may touch and
partly overlap (the pixel maximum is kept) but two boxes never overlap by more than
``max_iou``. A box is the *tight* box of the item's visible pixels (value > 16 after
resizing), not its square patch: trousers are narrow, bags are wide. Classes are the
Fashion-MNIST labels (10).

The scene set is a pure function of (item images, seed): train scenes are built from the
training items, validation scenes from the validation items (the same seeded split as
classification), test scenes from the official test items, so no item is shared between
splits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["make_scenes", "SCENE_CLASSES"]

SCENE_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip

_VISIBLE = 16  # uint8 level above which an item pixel counts for its box


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [K, 4] (x1, y1, x2, y2)."""
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def make_scenes(
    items: np.ndarray,
    labels: np.ndarray,
    n: int,
    seed: int,
    size: int = 64,
    max_objects: int = 4,
    scales: tuple[int, ...] = (20, 24, 28, 32, 36, 40),
    max_iou: float = 0.3,
    tries: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes from ``items`` (uint8 ``[N, 1, 28, 28]`` or ``[N, 28, 28]``) and their
    ``labels`` ``[N]``. Returns (images uint8 ``[n, 1, size, size]``, targets float32
    ``[n, max_objects, 5]`` of (class, x1, y1, x2, y2) pixel rows, class −1 for padding).
    An item that finds no place within ``tries`` draws is left out of its scene (a scene
    always keeps its first item)."""
    if max(scales) > size:
        raise ValueError(f"scales up to {max(scales)} px do not fit a {size} px canvas")
    items = np.asarray(items).reshape(len(items), 28, 28)
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_objects + 1, n)
    total = int(counts.sum())
    pick = rng.integers(0, len(items), total)
    side = rng.choice(np.asarray(scales), total)
    # Resize every drawn item once, grouped by side: patches[k] is item k at its side.
    patches: list[np.ndarray | None] = [None] * total
    for s in scales:
        sel = np.flatnonzero(side == s)
        if len(sel):
            x = torch.from_numpy(items[pick[sel]]).float()[:, None]  # [k, 1, 28, 28]
            r = F.interpolate(x, size=(int(s), int(s)), mode="bilinear", align_corners=False)
            r = r.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
            for j, k in enumerate(sel):
                patches[k] = r[j]
    images = np.zeros((n, size, size), np.uint8)
    targets = np.full((n, max_objects, 5), -1.0, np.float32)
    k = 0
    for i in range(n):
        placed: list[np.ndarray] = []
        for _ in range(counts[i]):
            patch, s = patches[k], int(side[k])
            label = labels[pick[k]]
            k += 1
            visible = patch > _VISIBLE
            rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
            if len(rows) == 0:
                continue  # a blank item has no box
            for _ in range(tries):
                x0, y0 = rng.integers(0, size - s + 1, 2)
                box = np.array(
                    [x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1], np.float32
                )
                if not placed or _iou(box, np.stack(placed)).max() <= max_iou:
                    break
            else:
                continue
            view = images[i, y0 : y0 + s, x0 : x0 + s]
            np.maximum(view, patch, out=view)
            targets[i, len(placed)] = (label, *box)
            placed.append(box)
    return torch.from_numpy(images)[:, None], torch.from_numpy(targets)
