"""Model zoo: VGG-16, ResNet-18/20/34, a small CNN and a tiny YOLO detector, built by name.

>>> from ann2snn.models import create_model
>>> model = create_model("resnet20", num_classes=10, act="qcfs", levels=4)

Every model uses activation modules from `ann2snn.nn.activations` as its only
nonlinearities (one fresh module per site), BatchNorm in every conv block, and no
activation after the final Linear, so conversion only has to swap activation modules.
"""

from ._registry import create_model, list_models, register_model

# Importing the family modules registers their builders.
from .cnn import SmallCNN, cnn
from .resnet import BasicBlock, ResNet, resnet18, resnet20, resnet34
from .vgg import VGG, vgg16
from .yolo import TinyYOLO, yolo_tiny

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "VGG",
    "ResNet",
    "BasicBlock",
    "SmallCNN",
    "vgg16",
    "resnet18",
    "resnet20",
    "resnet34",
    "cnn",
    "TinyYOLO",
    "yolo_tiny",
]
