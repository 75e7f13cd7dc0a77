"""ann2snn: convert trained ANNs into ultra-low-latency spiking neural networks.

Workflow: train a source ANN with a quantized activation (`QCFS`, `NoisyQCFS`,
`ClipQuant`) → `convert` it (IF, group or consistent-IF neurons) → `simulate` over T
steps → report. The ANN side and the SNN side are independent choices.
"""

from ._io import VERSION
from .calibration.noise import NoiseCalibration, calibrate_noise
from .calibration.post_conversion import CALIBRATION_METHODS, CalibrationLog, calibrate
from .checkpoint import CheckpointError, load, load_record, save_checkpoint
from .conversion.converter import ConversionError, SupportReport, check, convert, fold_bn
from .conversion.passes import PASSES, PassContext, conversion_passes
from .conversion.preparation import is_prepared, prepare
from .conversion.thresholds import init_thresholds
from .data import DatasetNotFoundError, create_loaders, list_datasets
from .deploy.binary import MemberExpand, MemberSum, SpikeScale, binarize, is_binarized
from .deploy.nir import NIRExportError, export_nir, import_nir
from .deploy.onnx import Unrolled, export_onnx, export_program
from .models import create_model, list_models, register_model
from .nn.activations import (
    QCFS,
    ClipQuant,
    NoisyQCFS,
    SpikeSpec,
    create_activation,
    list_activations,
    register_activation,
)
from .nn.network import SpikingNetwork, biases_off
from .nn.neurons import (
    ConsistentIF,
    GroupNeuron,
    IFNeuron,
    SpikingNeuron,
    create_neuron,
    list_neurons,
    neurons,
    register_neuron,
    reset,
)
from .nn.pooling import LIPool
from .simulation.activity import ActivityMonitor, ActivityReport, LayerActivity
from .simulation.runner import (
    LayerDiff,
    Schedule,
    SimulationResult,
    activity,
    compare,
    run,
    simulate,
)
from .training.loop import PRESETS, TrainConfig, train

__version__ = VERSION

__all__ = [
    "prepare",
    "is_prepared",
    "init_thresholds",
    "SpikeSpec",
    "register_neuron",
    "PASSES",
    "PassContext",
    "conversion_passes",
    "QCFS",
    "NoisyQCFS",
    "ClipQuant",
    "create_activation",
    "list_activations",
    "register_activation",
    "convert",
    "check",
    "fold_bn",
    "ConversionError",
    "SupportReport",
    "SpikingNetwork",
    "biases_off",
    "SpikingNeuron",
    "IFNeuron",
    "GroupNeuron",
    "ConsistentIF",
    "create_neuron",
    "list_neurons",
    "neurons",
    "reset",
    "LIPool",
    "Schedule",
    "SimulationResult",
    "LayerDiff",
    "simulate",
    "activity",
    "ActivityReport",
    "ActivityMonitor",
    "LayerActivity",
    "run",
    "compare",
    "load",
    "load_record",
    "save_checkpoint",
    "CheckpointError",
    "create_loaders",
    "list_datasets",
    "DatasetNotFoundError",
    "create_model",
    "list_models",
    "register_model",
    "calibrate_noise",
    "binarize",
    "export_nir",
    "import_nir",
    "NIRExportError",
    "export_onnx",
    "export_program",
    "Unrolled",
    "is_binarized",
    "SpikeScale",
    "MemberExpand",
    "MemberSum",
    "calibrate",
    "CalibrationLog",
    "CALIBRATION_METHODS",
    "NoiseCalibration",
    "train",
    "TrainConfig",
    "PRESETS",
    "__version__",
]
