"""Forms of a converted network for other tools: the binary-spike form (`binarize`),
NIR (`export_nir` / `import_nir`, with a profile per reader: `NIR_PROFILES`; `run_reader`
runs a file in that reader), ONNX and ``torch.export`` (`export_onnx`, `export_program`),
and other simulators' own neurons, exactly (`to_spikingjelly`, `to_sinabs`).
"""

from .binary import MemberExpand, MemberSum, SpikeScale, binarize, is_binarized
from .nir import NIR_PROFILES, NIRExportError, NIRImportError, export_nir, import_nir
from .onnx import Unrolled, export_onnx, export_program
from .readers import run_reader
from .sinabs import SinabsNetwork, to_sinabs
from .spikingjelly import SpikingJellyNetwork, to_spikingjelly

__all__ = [
    "binarize",
    "is_binarized",
    "SpikeScale",
    "MemberExpand",
    "MemberSum",
    "export_nir",
    "import_nir",
    "NIRExportError",
    "NIRImportError",
    "NIR_PROFILES",
    "run_reader",
    "export_onnx",
    "export_program",
    "Unrolled",
    "to_spikingjelly",
    "SpikingJellyNetwork",
    "to_sinabs",
    "SinabsNetwork",
]
