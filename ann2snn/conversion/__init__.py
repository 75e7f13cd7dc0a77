"""ANN → SNN: `prepare` a float model (quantized activations), `check` what converts,
`convert` a trained one into a `SpikingNetwork`.

Conversion is a list of graph passes (`PASSES`) over a ``torch.fx`` capture of the model,
driven by one rule table (`rules.RULES`) that says what each op becomes. Thresholds of
ReLU networks come from data (`thresholds.init_thresholds`: percentiles of each ReLU).
"""

from .converter import convert, fold_bn
from .passes import PASSES, PassContext, conversion_passes
from .preparation import is_prepared, prepare
from .support import ConversionError, OpReport, SupportReport, check
from .thresholds import init_thresholds

__all__ = [
    "prepare",
    "is_prepared",
    "convert",
    "check",
    "fold_bn",
    "init_thresholds",
    "ConversionError",
    "SupportReport",
    "OpReport",
    "PASSES",
    "PassContext",
    "conversion_passes",
]
