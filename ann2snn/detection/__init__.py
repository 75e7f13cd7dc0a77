"""Spiking object detection (the youngest feature: its API may still change).

`head`: YOLO-style targets, loss, decoding and NMS; `evaluation`: mAP of a detector as an
ANN and as an SNN at every T from one simulation.
"""

from .evaluation import ann_map, evaluate_detection_snn, evaluate_detector, simulate_detection
from .head import YoloSpec, assign_targets, decode, detector_spec, kmeans_anchors, yolo_loss

__all__ = [
    "YoloSpec",
    "detector_spec",
    "assign_targets",
    "yolo_loss",
    "decode",
    "kmeans_anchors",
    "simulate_detection",
    "evaluate_detection_snn",
    "evaluate_detector",
    "ann_map",
]
