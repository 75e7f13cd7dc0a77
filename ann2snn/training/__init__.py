"""Training the source ANN: a validated `TrainConfig` in, a self-describing run folder out
(`train`), resumable after any interruption, on one or many processes.
"""

from .config import PRESETS, TrainConfig
from .loop import evaluate, prepare_training, train, train_one_epoch

__all__ = ["train", "TrainConfig", "PRESETS", "train_one_epoch", "evaluate", "prepare_training"]
