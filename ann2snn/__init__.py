"""ann2snn: convert trained ANNs into ultra-low-latency spiking neural networks.

Workflow: train a source ANN with a quantized activation (`QCFS`, `NoisyQCFS`,
`ClipQuant`) → `convert` it (IF, group or consistent-IF neurons) → `simulate` over T
steps → report. The ANN side and the SNN side are independent choices.
"""

from .activations import (
    QCFS,
    ClipQuant,
    NoisyQCFS,
    SpikeSpec,
    create_activation,
    list_activations,
    register_activation,
)
from .binarization import MemberExpand, MemberSum, SpikeScale, binarize, is_binarized
from .calibration import init_thresholds
from .checkpoint import CheckpointError, load, load_record, save_checkpoint
from .conversion import ConversionError, SupportReport, check, convert, fold_bn
from .correction import CALIBRATION_METHODS, CalibrationLog, calibrate
from .data import DatasetNotFoundError, create_loaders, list_datasets
from .export import Unrolled, export_onnx, export_program
from .interchange import NIRExportError, export_nir, import_nir
from .models import create_model, list_models, register_model
from .monitor import ActivityMonitor, ActivityReport, LayerActivity
from .network import SpikingNetwork, biases_off
from .neuron import (
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
from .noise import NoiseCalibration, calibrate_noise
from .passes import PASSES, PassContext, conversion_passes
from .pooling import LIPool
from .preparation import is_prepared, prepare
from .simulation import LayerDiff, Schedule, SimulationResult, activity, compare, run, simulate
from .training import PRESETS, TrainConfig, train

__version__ = "0.1.0"

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
