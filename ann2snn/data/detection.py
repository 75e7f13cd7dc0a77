"""Detection datasets: Fashion-MNIST scenes, PASCAL VOC and COCO as train / val / test loaders.

Every loader yields ``(x float32 [B, C, S, S], y float32 [B, N, 5])``: the images resized
to the square input side ``S`` and normalised, and per image up to N ``(class, x1, y1, x2,
y2)`` rows in input pixels, padded with class −1 (`ann2snn.detection.head`). Loaders have the
classification loaders' interface (``len``, ``dataset_size``, ``set_epoch``), and the
training split flips images (and boxes) horizontally at random, seeded per epoch.

* ``fashion-scenes``: `ann2snn.data.scenes`, 64 px, 10 classes, built in memory from the
  Fashion-MNIST files (16,000 train, 2,000 val and 2,000 test scenes; ``limit_*`` cap them).
* ``voc``: torchvision's ``VOCDetection`` layout, ``<data_dir>/VOCdevkit/VOC2007`` (and
  ``VOC2012`` if present): train = trainval of each year found, test = VOC2007 ``test``;
  20 classes; objects marked ``difficult`` are dropped. Input 416 px.
* ``coco``: ``<data_dir>/annotations/instances_{train,val}2017.json`` with images in
  ``<data_dir>/{train,val}2017`` (torchvision's ``CocoDetection``, needs pycocotools):
  train = train2017, test = val2017 (test2017 has no labels); category ids are renumbered
  0..K−1 in id order; crowd boxes are dropped. Input 416 px.

The validation split is a seeded share (``val_fraction``) of the training images, never
augmented; it selects the epoch and calibrates, the test split only reports.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._common import EpochLoader, Loaders, data_roots, dataset_not_found, epoch_generator
from .images import load_fashion_mnist
from .scenes import make_scenes

__all__ = [
    "DETECTION_DATASETS",
    "VOC_CLASSES",
    "is_detection_dataset",
    "create_detection_loaders",
    "SceneLoader",
    "PhotoLoader",
    "pad_targets",
]

DETECTION_DATASETS = ("fashion-scenes", "voc", "coco")
_ALIASES = {"scenes": "fashion-scenes", "fashion-mnist-scenes": "fashion-scenes"}
_ALIASES |= {"pascal-voc": "voc", "voc2007": "voc", "coco2017": "coco"}
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
# Pixel mean/std of the generated training scenes (64 px, measured once); ImageNet's for photos.
_SCENE_STATS = ((0.147,), (0.287,))
_PHOTO_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SCENE_COUNTS = {"train": 16000, "val": 2000, "test": 2000}


def _key(name: str) -> str:
    k = name.lower().replace("_", "-")
    return _ALIASES.get(k, k)


def is_detection_dataset(name: str) -> bool:
    """Whether ``name`` (or an alias) is one of `DETECTION_DATASETS`."""
    return isinstance(name, str) and _key(name) in DETECTION_DATASETS


def pad_targets(rows: list[Tensor]) -> Tensor:
    """Per-image ``[K_i, 5]`` rows → one ``[B, max K_i, 5]`` tensor padded with class −1
    (at least one row, so an image-less batch still has the target's shape)."""
    n = max([len(r) for r in rows] + [1])
    out = torch.full((len(rows), n, 5), -1.0)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _flip(y: Tensor, width: int) -> Tensor:
    """Mirror boxes ``[..., 5]`` horizontally in an image ``width`` wide (padding kept)."""
    y = y.clone()
    valid = y[..., 0] >= 0
    x1, x2 = y[..., 1].clone(), y[..., 3].clone()
    y[..., 1] = torch.where(valid, width - x2, x1)
    y[..., 3] = torch.where(valid, width - x1, x2)
    return y


class SceneLoader(EpochLoader):
    """Batches of Fashion-MNIST scenes on ``device``, composed (`make_scenes`) from
    ``items``/``labels`` on first use, so a split nobody reads costs nothing; ``flip``
    mirrors half the images of every epoch (seeded by epoch)."""

    def __init__(
        self,
        items: np.ndarray,
        labels: np.ndarray,
        n: int,
        scene_seed: int,
        size: int,
        stats: tuple,
        batch_size: int,
        *,
        shuffle: bool = False,
        flip: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self._source, self._made = (items, labels, n, scene_seed, size), None
        self.mean, self.std = (torch.tensor(s, device=self.device).view(1, -1, 1, 1) for s in stats)
        self.batch_size, self.shuffle, self.flip, self.seed = batch_size, shuffle, flip, seed
        self.indices = torch.arange(n)

    def _scenes(self) -> tuple[Tensor, Tensor]:
        if self._made is None:
            items, labels, n, scene_seed, size = self._source
            images, targets = make_scenes(items, labels, n, seed=scene_seed, size=size)
            self._made = (images.to(self.device), targets.to(self.device))
        return self._made

    @property
    def images(self) -> Tensor:
        """uint8 ``[N, 1, S, S]``."""
        return self._scenes()[0]

    @property
    def targets(self) -> Tensor:
        """float32 ``[N, M, 5]`` (class, x1, y1, x2, y2), class −1 for padding."""
        return self._scenes()[1]

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n, width = len(self.images), self.images.shape[-1]
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        flips = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        order, flips = order.to(self.device), flips.to(self.device)
        for s in range(0, n, self.batch_size):
            idx, f = order[s : s + self.batch_size], flips[s : s + self.batch_size]
            x = (self.images[idx].float() / 255 - self.mean) / self.std  # [b, C, S, S]
            y = self.targets[idx]  # [b, M, 5]
            if self.flip:
                x = torch.where(f.view(-1, 1, 1, 1), x.flip(3), x)
                y = torch.where(f.view(-1, 1, 1), _flip(y, width), y)
            yield x, y


# --- VOC / COCO ---------------------------------------------------------------------------


class _PhotoDataset(torch.utils.data.Dataset):
    """``(index, flip)`` → (normalised ``[3, S, S]`` image, ``[K, 5]`` box rows)."""

    def __init__(self, samples: list[tuple[Any, int]], size: int) -> None:
        # samples: (a torchvision dataset, index into it) pairs; the dataset carries its
        # boxes, checked at the door, as ``ann2snn_table`` (one [K, 5] tensor per image).
        self.samples, self.size = samples, size
        self.mean, self.std = (torch.tensor(s).view(-1, 1, 1) for s in _PHOTO_STATS)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[Tensor, Tensor]:
        from torchvision.transforms.functional import pil_to_tensor, resize

        i, flip = item
        source, j = self.samples[i]
        img, _ = source[j]
        w, h = img.size
        rows = source.ann2snn_table[j].clone()  # [K, 5] checked pixels of the original image
        x = resize(pil_to_tensor(img.convert("RGB")), [self.size, self.size], antialias=True)
        x = (x.float() / 255 - self.mean) / self.std
        rows[:, 1::2] *= self.size / w
        rows[:, 2::2] *= self.size / h
        if flip:
            x, rows = x.flip(2), _flip(rows, self.size)
        return x, rows


def _collate(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.stack([x for x, _ in batch]), pad_targets([r for _, r in batch])


class PhotoLoader(EpochLoader):
    """A torch ``DataLoader`` over VOC/COCO samples with the loaders' interface."""

    def __init__(
        self,
        samples: list,
        indices: Tensor,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        flip: bool,
        seed: int,
        num_workers: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.dataset, self.indices = _PhotoDataset(samples, size), indices
        self.batch_size, self.shuffle, self.flip, self.seed = batch_size, shuffle, flip, seed
        self.num_workers, self.device = num_workers, torch.device(device)

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.indices)
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        flips = (torch.rand(n, generator=g) < 0.5) & self.flip
        sampler = list(zip(self.indices[order].tolist(), flips.tolist()))
        loader = torch.utils.data.DataLoader(
            self.dataset,
            self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate,
            generator=g,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class BoxCheck:
    """Boxes checked at the door, once per dataset, when its loaders are made: non-finite
    coordinates and unknown classes are refused naming the file and the object; boxes are
    clipped to their image and the degenerate ones (no area left) dropped, each counted."""

    def __init__(self, name: str) -> None:
        self.name, self.clipped, self.dropped = name, 0, 0

    def rows(
        self, objects: list[tuple[int, list[float]]], width: float, height: float, where: str
    ) -> Tensor:
        """``[K, 5]`` (class, x1, y1, x2, y2) rows of one image's ``(class, box)`` objects."""
        out = []
        for i, (cls, box) in enumerate(objects):
            b = np.asarray(box, dtype=np.float64)
            if not np.isfinite(b).all():
                raise ValueError(f"{where}: object {i} has a non-finite box {box}; fix the file")
            c = np.clip(b, 0, [width, height, width, height])
            self.clipped += bool((c != b).any())
            if c[2] <= c[0] or c[3] <= c[1]:
                self.dropped += 1
                continue
            out.append((cls, *c.tolist()))
        return torch.tensor(out, dtype=torch.float32).view(-1, 5)

    def report(self) -> None:
        if self.clipped or self.dropped:
            warnings.warn(
                f"{self.name}: {self.clipped} box(es) clipped to their image, {self.dropped} "
                "degenerate box(es) (no area inside the image) dropped",
                stacklevel=3,
            )


def _voc_objects(target: dict, where: str) -> tuple[list, float, float]:
    """(class, box) of every non-difficult object of one parsed VOC annotation, and the
    image's width and height."""
    ann = target["annotation"]
    objects = ann.get("object", [])
    objects = objects if isinstance(objects, list) else [objects]
    out, w, h = [], 0.0, 0.0  # the size is read (and must be valid) once there is an object
    for i, obj in enumerate(objects):
        if str(obj.get("difficult", "0")) == "1":
            continue
        if obj.get("name") not in VOC_CLASSES:
            raise ValueError(
                f"{where}: object {i} has class {obj.get('name')!r}, not one of the 20 VOC "
                f"classes ({', '.join(VOC_CLASSES)})"
            )
        try:
            b = obj["bndbox"]
            # VOC pixels are 1-based and inclusive: (xmin − 1, ymin − 1, xmax, ymax) as edges.
            box = [float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])]
            size = ann["size"]
            w, h = float(size["width"]), float(size["height"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{where}: object {i}: a box or size field is missing or not a number ({e})"
            ) from None
        out.append((VOC_CLASSES.index(obj["name"]), box))
    return out, w, h


def _voc_table(ds: Any, check: BoxCheck) -> list[Tensor]:
    """Every annotation of a `VOCDetection` read, checked and turned into rows, up front."""
    import xml.etree.ElementTree as ET

    table = []
    for path in ds.annotations:
        try:
            target = ds.parse_voc_xml(ET.parse(path).getroot())
        except (ET.ParseError, OSError) as e:
            raise ValueError(f"{path}: not a readable VOC annotation ({e})") from None
        objects, w, h = _voc_objects(target, str(path))
        table.append(check.rows(objects, w, h, str(path)))
    return table


def _load_voc(data_dir: str | os.PathLike | None) -> tuple[list, list]:
    from torchvision.datasets import VOCDetection

    candidates = [r / s for r in data_roots(data_dir) for s in ("", "voc", "VOC")]
    root = next((c for c in candidates if (c / "VOCdevkit" / "VOC2007").is_dir()), None)
    if root is None:
        raise dataset_not_found(
            "PASCAL VOC (VOCdevkit/VOC2007)",
            [str(c / "VOCdevkit" / "VOC2007") for c in candidates]
            or ["nowhere: no data_dir given, $ANN2SNN_DATA unset"],
            "download VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar (and VOC2012 "
            "trainval if wanted), unpack them into one folder (it then holds VOCdevkit/) and "
            "pass --data-dir (data_dir=).",
        )

    check = BoxCheck("PASCAL VOC")

    def part(year: str, image_set: str) -> list:
        split_file = root / "VOCdevkit" / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file():
            return []
        ds = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        ds.ann2snn_table = _voc_table(ds, check)
        return [(ds, j) for j in range(len(ds))]

    train = part("2007", "trainval") + part("2012", "trainval")
    test = part("2007", "test")
    check.report()
    if not train or not test:
        raise dataset_not_found(
            "PASCAL VOC image sets",
            [
                str(root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / f"{s}.txt")
                for s in ("trainval", "test")
            ],
            "unpack both the VOC2007 trainval and test archives into the same folder",
        )
    return train, test


def _load_coco(data_dir: str | os.PathLike | None) -> tuple[list, list, int]:
    from torchvision.datasets import CocoDetection

    candidates = [r / s for r in data_roots(data_dir) for s in ("", "coco")]
    files = ("annotations/instances_train2017.json", "annotations/instances_val2017.json")
    root = next((c for c in candidates if all((c / f).is_file() for f in files)), None)
    if root is None:
        raise dataset_not_found(
            "COCO 2017 (annotations/instances_{train,val}2017.json)",
            [str(c) for c in candidates] or ["nowhere: no data_dir given, $ANN2SNN_DATA unset"],
            "download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
            "cocodataset.org, unpack them into one folder and pass --data-dir (data_dir=).",
        )
    parts, ids, check = [], None, BoxCheck("COCO")
    for split in ("train2017", "val2017"):
        file = root / f"annotations/instances_{split}.json"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                ds = CocoDetection(str(root / split), str(file))
        except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{file}: not a readable COCO annotation file ({e})") from None
        cats = sorted(ds.coco.getCatIds())
        ids = ids or {c: i for i, c in enumerate(cats)}
        if set(cats) != set(ids):
            raise ValueError(f"{root}: train2017 and val2017 list different categories")
        ds.ann2snn_table = _coco_table(ds, ids, check, file)
        parts.append([(ds, j) for j in range(len(ds))])
    check.report()
    return parts[0], parts[1], len(ids)


def _coco_table(ds: Any, ids: dict[int, int], check: BoxCheck, file: Path) -> list[Tensor]:
    """Every image's non-crowd boxes as checked rows, up front (the file is in memory)."""
    table = []
    for image_id in ds.ids:
        info = ds.coco.imgs[image_id]
        objects = []
        for a in ds.coco.imgToAnns.get(image_id, []):
            if a.get("iscrowd", 0):
                continue
            where = f"{file}: annotation {a.get('id')} (image {image_id})"
            if a.get("category_id") not in ids:
                raise ValueError(
                    f"{where}: category_id {a.get('category_id')!r} is not among the file's "
                    f"categories ({', '.join(map(str, sorted(ids)))})"
                )
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: bbox {a.get('bbox')!r} is not 4 numbers") from None
            objects.append((ids[a["category_id"]], [x, y, x + w, y + h]))
        table.append(
            check.rows(objects, info["width"], info["height"], f"{file}: image {image_id}")
        )
    return table


def create_detection_loaders(
    name: str,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    val_fraction: float = 0.1,
    seed: int = 42,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    augment: bool = True,
    eval_batch_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    image_size: int | None = None,
) -> Loaders:
    """Train / val / test loaders for one of `DETECTION_DATASETS` (see the module doc).
    ``image_size`` overrides the input side (64 for scenes, 416 for VOC/COCO)."""
    key = _key(name)
    if key not in DETECTION_DATASETS:
        raise ValueError(
            f"unknown detection dataset {name!r}; choose from {list(DETECTION_DATASETS)}"
        )
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    device = device if device is not None else "cuda" if torch.cuda.is_available() else "cpu"
    ebs = eval_batch_size or batch_size
    if key == "fashion-scenes":
        size = image_size or 64
        train_x, train_y, test_x, test_y = load_fashion_mnist(data_dir)
        perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed)).numpy()
        n_val = round(len(train_y) * val_fraction)
        pools = {"train": perm[n_val:], "val": perm[:n_val], "test": np.arange(len(test_y))}
        out = {}
        for i, (split, idx) in enumerate(pools.items()):
            if len(idx) == 0:
                out[split] = None
                continue
            limit = limit_train if split == "train" else limit_test
            n = min(_SCENE_COUNTS[split], limit or _SCENE_COUNTS[split])
            src_x, src_y = (test_x, test_y) if split == "test" else (train_x, train_y)
            train = split == "train"
            out[split] = SceneLoader(
                src_x[idx],
                src_y[idx],
                n,
                seed * 10 + i,
                size,
                _SCENE_STATS,
                batch_size if train else ebs,
                shuffle=train,
                flip=train and augment,
                seed=seed,
                device=device,
            )
        return Loaders(out["train"], out["val"], out["test"], 10, 1, size, key, *_SCENE_STATS)
    size = image_size or 416
    if key == "voc":
        train_s, test_s = _load_voc(data_dir)
        classes = len(VOC_CLASSES)
    else:
        train_s, test_s, classes = _load_coco(data_dir)
    perm = torch.randperm(len(train_s), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(train_s) * val_fraction)
    splits = {
        "train": (train_s, perm[n_val:][:limit_train].sort().values),
        "val": (train_s, perm[:n_val][:limit_test].sort().values),
        "test": (test_s, torch.arange(len(test_s))[:limit_test]),
    }
    out = {}
    for split, (samples, idx) in splits.items():
        train = split == "train"
        out[split] = (
            PhotoLoader(
                samples,
                idx,
                size,
                batch_size if train else ebs,
                shuffle=train,
                flip=train and augment,
                seed=seed,
                num_workers=num_workers,
                device=device,
            )
            if len(idx)
            else None
        )
    return Loaders(out["train"], out["val"], out["test"], classes, 3, size, key, *_PHOTO_STATS)
