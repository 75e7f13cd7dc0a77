"""Datasets by name: image classification (Fashion-MNIST, CIFAR-10/100, ImageNet) and
detection (Fashion-MNIST scenes, VOC, COCO), all through `create_loaders`.

The implementations (`images`, `detection`) never import this dispatcher; both build on
`_common` (the `Loaders` record, the loader base, where data is looked for).
"""

from __future__ import annotations

import os

import torch

from ._common import DatasetNotFoundError, Loaders
from .detection import DETECTION_DATASETS, create_detection_loaders, is_detection_dataset
from .images import IMAGE_DATASETS, create_image_loaders, image_dataset_key

__all__ = [
    "create_loaders",
    "list_datasets",
    "dataset_task",
    "Loaders",
    "DatasetNotFoundError",
    "IMAGE_DATASETS",
    "DETECTION_DATASETS",
]


def list_datasets() -> list[str]:
    """Names accepted by `create_loaders` (classification, then detection)."""
    return list(IMAGE_DATASETS) + list(DETECTION_DATASETS)


def dataset_task(name: str) -> str:
    """``"classification"`` or ``"detection"`` for a dataset name (aliases accepted)."""
    if is_detection_dataset(name):
        return "detection"
    if image_dataset_key(name) is not None:
        return "classification"
    raise ValueError(f"unknown dataset {name!r}; choose from {list_datasets()}")


def create_loaders(
    name: str,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    val_fraction: float = 0.1,
    seed: int = 42,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    augment: bool = True,
    autoaugment: bool = False,
    cutout: int = 0,
    download: bool = False,
    in_memory: bool | None = None,
    eval_batch_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Loaders:
    """Train / val / test loaders for one of `list_datasets()`.

    ``val`` is ``round(val_fraction·N)`` training images picked by ``seed``, never augmented.
    ``limit_train`` keeps the first N of the seeded-shuffled train split, ``limit_test`` the
    first N of the test split (and of the val split). ``in_memory=None`` takes the on-device
    path for Fashion-MNIST/CIFAR unless AutoAugment is asked for (``augment=False`` turns all
    augmentation off); ImageNet always uses a `DataLoader`. Batches arrive on ``device``
    (default: cuda if available); the last partial batch is kept in every split.
    Detection datasets yield padded box targets (`ann2snn.data.detection`).
    """
    if dataset_task(name) == "detection":  # fashion-scenes, voc, coco: boxes, not labels
        if autoaugment or cutout:
            raise ValueError(
                f"autoaugment={autoaugment}, cutout={cutout}: classification augmentations; "
                f"the detection dataset {name!r} flips images (and boxes) only"
            )
        return create_detection_loaders(
            name,
            data_dir,
            batch_size,
            val_fraction,
            seed,
            num_workers,
            device,
            augment,
            eval_batch_size,
            limit_train,
            limit_test,
        )
    return create_image_loaders(
        name,
        data_dir,
        batch_size,
        val_fraction,
        seed,
        num_workers,
        device,
        augment,
        autoaugment,
        cutout,
        download,
        in_memory,
        eval_batch_size,
        limit_train,
        limit_test,
    )
