"""Running a converted network over T time steps and measuring it: accuracy after every
step (`simulate`), the wake/sleep `Schedule`, the ANN-vs-SNN layer gap (`compare`), and
spike activity, SynOps and energy (`activity`, `ActivityMonitor`).
"""

from .activity import ActivityMonitor, ActivityReport, LayerActivity
from .gaps import LayerDiff, ann_activations, compare, spike_rates
from .runner import SimulationResult, activity, run, simulate
from .schedule import Phase, Schedule, default_max_fold, run_schedule

__all__ = [
    "simulate",
    "run",
    "activity",
    "compare",
    "ann_activations",
    "spike_rates",
    "Schedule",
    "Phase",
    "run_schedule",
    "default_max_fold",
    "SimulationResult",
    "LayerDiff",
    "ActivityMonitor",
    "ActivityReport",
    "LayerActivity",
]
