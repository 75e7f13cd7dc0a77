"""Training the source ANN: a validated `TrainConfig` in, a self-describing run folder out
(`train`), resumable after any interruption, on one or many processes.

``config`` (the recipe and presets) → ``setup`` (placement, data, model, optimizer) →
``steps`` (one epoch's passes) and ``tasks`` (classification or detection) → ``loop``
(the run: fit an epoch, after-epoch hook, record, save, log); ``resume``, ``distributed``
and ``lock`` keep a run safe to interrupt and to spread over processes.
"""

from .config import PRESETS, TrainConfig
from .fine_tuning import FinetuneLog, SurrogateIF, finetune, to_ann
from .loop import train
from .setup import Placement, TrainingSetup, prepare_training
from .steps import Scores, evaluate, lr_at, param_groups, seed_everything, train_one_epoch

__all__ = [
    "train",
    "finetune",
    "FinetuneLog",
    "to_ann",
    "SurrogateIF",
    "TrainConfig",
    "PRESETS",
    "train_one_epoch",
    "evaluate",
    "prepare_training",
    "Placement",
    "TrainingSetup",
    "Scores",
    "param_groups",
    "lr_at",
    "seed_everything",
]
