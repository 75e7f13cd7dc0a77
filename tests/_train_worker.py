"""Subprocess entry point for the kill-and-resume test in test_train.py.

    python tests/_train_worker.py CONFIG_JSON SLOW_FROM_EPOCH MARKER THREADS

Trains the tiny model of `_tiny` on its loaders, with a training loader that becomes slow from
epoch SLOW_FROM_EPOCH (0-based) on and touches MARKER after that epoch's first batch,
so the test can SIGKILL the process mid-epoch.
"""

import json
import sys

import _tiny  # the script's folder (tests/) is on sys.path
import torch

config_json, slow_from_epoch, marker, threads = sys.argv[1:]
torch.set_num_threads(int(threads))  # same as the parent: identical float reductions

from ann2snn.training import TrainConfig  # noqa: E402

_tiny.train_tiny(
    TrainConfig(**json.loads(config_json)),
    slow={"slow_from_epoch": int(slow_from_epoch), "marker": marker},
)
