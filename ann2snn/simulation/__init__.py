"""Running a converted network over T time steps and measuring it: accuracy after every
step (`simulate`), the wake/sleep `Schedule`, the ANN-vs-SNN layer gap (`compare`), and
spike activity, SynOps and energy (`activity`, `ActivityMonitor`).
"""

from .activity import ActivityMonitor, ActivityReport, LayerActivity
from .runner import (
    LayerDiff,
    Phase,
    Schedule,
    SimulationResult,
    activity,
    compare,
    run,
    run_schedule,
    simulate,
)

__all__ = [
    "simulate",
    "run",
    "activity",
    "compare",
    "Schedule",
    "Phase",
    "run_schedule",
    "SimulationResult",
    "LayerDiff",
    "ActivityMonitor",
    "ActivityReport",
    "LayerActivity",
]
