"""What a run optimises and reports, picked once from its dataset: classification
(cross-entropy, top-1) or detection (`ann2snn.detection.yolo_loss`, mAP@0.5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..data.detection import is_detection_dataset
from ..detection import detector_spec, evaluate_detector, yolo_loss
from ..models.yolo import YoloSpec
from .config import TrainConfig
from .distributed import Runtime
from .steps import evaluate

__all__ = ["Task", "ClassificationTask", "DetectionTask", "task_for"]


class ClassificationTask:
    """Cross-entropy training (the loop's default loss), top-1 accuracy and loss reported."""

    detection = False
    metric = "acc"
    loss: Callable[[Tensor, Tensor], Tensor] | None = None

    def scores(
        self, model: nn.Module, data: Any, device: torch.device, rt: Runtime, **kw: Any
    ) -> dict[str, float]:
        s = evaluate(model, data, device, runtime=rt, **kw)
        return {"acc": s.acc, "loss": s.loss}


class DetectionTask:
    """YOLO loss on the detector's head (`model.yolo_spec`), mAP@0.5 and COCO mAP reported."""

    detection = True
    metric = "map50"

    def __init__(self, spec: YoloSpec) -> None:
        self.spec = spec

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return yolo_loss(out, y, self.spec)

    def scores(
        self, model: nn.Module, data: Any, device: torch.device, rt: Runtime, **kw: Any
    ) -> dict[str, float]:
        map50, map_, loss = evaluate_detector(model, data, self.spec, device, **kw)
        return {"map50": map50, "map": map_, "loss": loss}


Task = ClassificationTask | DetectionTask


def task_for(config: TrainConfig, model: nn.Module, loaders: Any) -> Task:
    """The run's task, from its dataset; a detection run needs a detector and a method
    whose training does not measure classification accuracy."""
    if not is_detection_dataset(loaders.name):
        return ClassificationTask()
    spec = detector_spec(model)
    if config.act == "nq":
        raise ValueError(
            "act='nq' cannot train a detector: NQ's σ calibration selects epochs by the SNN's "
            "classification accuracy; use qcfs, clipq or relu for detection"
        )
    if config.label_smoothing:
        raise ValueError(
            f"label_smoothing={config.label_smoothing} is a classification setting; use 0 "
            "for detection"
        )
    return DetectionTask(spec)
