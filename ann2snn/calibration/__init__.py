"""What "calibrate" means in this library: corrections applied to a converted network
from data, after conversion.

* `calibrate` — post-conversion calibration (bias / offset), layer by layer.
* `calibrate_noise` — NQ's per-layer noise σ, re-estimated by simulating the SNN.

(Percentile initialisation of thresholds before training or conversion is not
calibration here: it is `ann2snn.conversion.init_thresholds`.)
"""

from .noise import NoiseCalibration, calibrate_noise, nq_epoch_hook
from .post_conversion import CALIBRATION_METHODS, CalibrationLog, calibrate

__all__ = [
    "calibrate",
    "CalibrationLog",
    "CALIBRATION_METHODS",
    "calibrate_noise",
    "NoiseCalibration",
    "nq_epoch_hook",
]
