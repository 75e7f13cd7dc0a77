"""ann2snn: convert trained ANNs into ultra-low-latency spiking neural networks.

Workflow: train a source ANN with a quantized activation (`QCFS`, `NoisyQCFS`,
`ClipQuant`) → `convert` it (IF, group or consistent-IF neurons) → `simulate` over T
steps → report. The ANN side and the SNN side are independent choices.
"""

# The face is lazy (PEP 562): `import ann2snn` costs milliseconds and imports neither torch
# nor a wing; each name is imported from its wing on first use. So the CLI can catch a
# Ctrl-C during its imports, and scripts that need one wing pay for that wing only.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import VERSION

__version__ = VERSION

# name → the wing it is imported from.
_EXPORTS = {
    "calibration": ("calibrate", "calibrate_noise"),
    "checkpoint": ("CheckpointError", "load", "save_checkpoint"),
    "conversion": ("ConversionError", "SupportReport", "check", "convert", "prepare"),
    "data": ("DatasetNotFoundError", "create_loaders", "list_datasets"),
    "deploy": ("NIRExportError", "binarize", "export_nir", "export_onnx", "export_program",
        "import_nir"),
    "models": ("create_model", "list_models", "register_model"),
    "nn": ("QCFS", "ClipQuant", "ConsistentIF", "GroupNeuron", "IFNeuron", "LIPool", "NoisyQCFS",
        "SpikeSpec", "SpikingNetwork", "SpikingNeuron", "create_activation", "create_neuron",
        "list_activations", "list_neurons", "register_activation", "register_neuron", "reset"),
    "simulation": ("ActivityReport", "Schedule", "SimulationResult", "activity", "compare",
        "run", "simulate"),
    "training": ("PRESETS", "TrainConfig", "finetune", "train"),
}  # fmt: skip

# The verbs and core types. Everything else is public one import deeper, in its wing
# (`ann2snn.conversion.fold_bn`, `ann2snn.simulation.ActivityMonitor`, ...).
__all__ = [
    # the workflow
    "prepare",
    "check",
    "convert",
    "simulate",
    "run",
    "compare",
    "activity",
    "calibrate",
    "calibrate_noise",
    "finetune",
    "binarize",
    "export_nir",
    "import_nir",
    "export_onnx",
    "export_program",
    "train",
    "load",
    "save_checkpoint",
    "reset",
    # building blocks
    "QCFS",
    "NoisyQCFS",
    "ClipQuant",
    "SpikeSpec",
    "SpikingNeuron",
    "IFNeuron",
    "GroupNeuron",
    "ConsistentIF",
    "LIPool",
    "SpikingNetwork",
    "Schedule",
    "SimulationResult",
    "ActivityReport",
    "SupportReport",
    "TrainConfig",
    "PRESETS",
    # registries
    "create_activation",
    "list_activations",
    "register_activation",
    "create_neuron",
    "list_neurons",
    "register_neuron",
    "create_model",
    "list_models",
    "register_model",
    "create_loaders",
    "list_datasets",
    # errors
    "ConversionError",
    "CheckpointError",
    "DatasetNotFoundError",
    "NIRExportError",
    "__version__",
]

# Names that lived at the top before the package had wings: still importable from here,
# their home is the wing named.
_MOVED = {
    "is_prepared": "conversion", "init_thresholds": "conversion", "fold_bn": "conversion",
    "PASSES": "conversion", "PassContext": "conversion", "conversion_passes": "conversion",
    "biases_off": "nn", "neurons": "nn",
    "LayerDiff": "simulation", "ActivityMonitor": "simulation", "LayerActivity": "simulation",
    "CALIBRATION_METHODS": "calibration", "CalibrationLog": "calibration",
    "NoiseCalibration": "calibration",
    "Unrolled": "deploy", "is_binarized": "deploy", "SpikeScale": "deploy",
    "MemberExpand": "deploy", "MemberSum": "deploy",
    "load_record": "checkpoint",
}  # fmt: skip

_HOME = {name: wing for wing, names in _EXPORTS.items() for name in names} | _MOVED
_WINGS = (
    "nn", "data", "conversion", "simulation", "models", "calibration", "deploy", "detection",
    "training", "checkpoint", "methods", "evaluation", "runs", "report",
)  # fmt: skip


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value  # the next lookup is an ordinary attribute
        return value
    if name in _WINGS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME) | set(_WINGS))


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .calibration import calibrate, calibrate_noise
    from .checkpoint import CheckpointError, load, save_checkpoint
    from .conversion import ConversionError, SupportReport, check, convert, prepare
    from .data import DatasetNotFoundError, create_loaders, list_datasets
    from .deploy import (
        NIRExportError,
        binarize,
        export_nir,
        export_onnx,
        export_program,
        import_nir,
    )
    from .models import create_model, list_models, register_model
    from .nn import (
        QCFS,
        ClipQuant,
        ConsistentIF,
        GroupNeuron,
        IFNeuron,
        LIPool,
        NoisyQCFS,
        SpikeSpec,
        SpikingNetwork,
        SpikingNeuron,
        create_activation,
        create_neuron,
        list_activations,
        list_neurons,
        register_activation,
        register_neuron,
        reset,
    )
    from .simulation import (
        ActivityReport,
        Schedule,
        SimulationResult,
        activity,
        compare,
        run,
        simulate,
    )
    from .training import PRESETS, TrainConfig, train
