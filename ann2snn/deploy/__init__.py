"""Forms of a converted network for other tools: the binary-spike form (`binarize`),
NIR (`export_nir` / `import_nir`), ONNX and ``torch.export`` (`export_onnx`,
`export_program`), and SpikingJelly's own neurons (`to_spikingjelly`).
"""

from .binary import MemberExpand, MemberSum, SpikeScale, binarize, is_binarized
from .nir import NIRExportError, NIRImportError, export_nir, import_nir
from .onnx import Unrolled, export_onnx, export_program
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
    "export_onnx",
    "export_program",
    "Unrolled",
    "to_spikingjelly",
    "SpikingJellyNetwork",
]
