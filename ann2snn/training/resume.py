"""What resuming a run needs beyond the checkpoint files: the RNG states as tensors (no
pickle), and the checks that a folder holds a run this recipe may continue.

The resume pair itself (``resume-<hash>.safetensors`` + ``resume.json``) is the run folder's file
format and lives in `ann2snn.checkpoint`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import json_safe
from ..checkpoint import (
    RESUME_TAG,
    CheckpointError,
    check_same_run,
    load_record,
    load_resume_state,
)
from .config import RESUMABLE_CHANGES, TrainConfig

__all__ = [
    "rng_state",
    "set_rng_state",
    "has_run",
    "plain_recipe",
    "check_resumable",
    "check_first_epoch_only",
    "open_run",
]

# ----------------------------------------------------------------------------- RNG state
# Saved as uint8 tensors (no pickle): torch's and CUDA's states already are; Python's
# and NumPy's Mersenne-Twister words (uint32) are stored as their little-endian bytes.


def _u8(words: Any) -> Tensor:
    return torch.from_numpy(np.asarray(words, dtype="<u4").view(np.uint8).copy())


def _words(t: Tensor) -> np.ndarray:
    return np.frombuffer(t.numpy().tobytes(), dtype="<u4")


def rng_state() -> dict[str, Any]:
    py_version, py_words, py_gauss = random.getstate()
    np_name, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        # Only when CUDA is in use: querying it would otherwise initialise CUDA.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": {"version": py_version, "words": _u8(py_words), "gauss_next": py_gauss},
        "numpy": {
            "name": np_name,
            "words": _u8(np_words),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in _words(py["words"])), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], _words(n["words"]).copy(), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )


# ----------------------------------------------------------------------------- run folder


def has_run(run_dir: Path) -> bool:
    return any((run_dir / f"{tag}.json").exists() for tag in ("last", "best", RESUME_TAG))


def plain_recipe(config: TrainConfig) -> dict[str, Any]:
    return json_safe(asdict(config))


def check_resumable(
    config: TrainConfig, saved: Mapping[str, Any], run_dir: Path, done: int
) -> None:
    now = plain_recipe(config)
    changed = sorted(
        k
        for k in set(now) | set(saved)
        if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k)
    )
    if "epochs" in changed and config.epochs >= done:
        # Extending (or shortening down to what is done) a run: the cosine schedule of the
        # remaining epochs follows the new total.
        changed.remove("epochs")
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} → {now.get(k)!r}" for k in changed)
        raise ValueError(
            f"{run_dir}: cannot resume with a different recipe ({diffs}); resume with the "
            "original settings, or choose another out_dir for a new run"
        )


def check_first_epoch_only(config: TrainConfig, run_dir: Path) -> None:
    """Refuse to restart in a folder that holds more than an uncommitted first epoch of a run
    with this recipe."""
    for tag in ("best", "last"):
        path = run_dir / f"{tag}.json"
        if not path.exists():
            continue
        try:
            record = load_record(path)
        except CheckpointError:
            record = None
        ok = record is not None and record.get("epoch") == 1
        if ok:
            try:
                check_resumable(config, record.get("recipe") or {}, run_dir, 0)
            except ValueError:
                ok = False
        if not ok:
            raise FileExistsError(
                f"{run_dir} holds a checkpoint but no {RESUME_TAG}.json, so it cannot be "
                "resumed; choose another out_dir for a new run"
            )


def open_run(config: TrainConfig, resume: bool, run_dir: Path) -> dict[str, Any] | None:
    """The saved resume state to continue from, or None for a fresh run; refuses a folder
    that holds another run, or this run with a changed recipe."""
    if not has_run(run_dir):
        return None
    if not resume:
        raise FileExistsError(
            f"{run_dir} already holds a training run; pass resume=True to continue it, or "
            "choose another out_dir (runs are never overwritten)"
        )
    if not (run_dir / f"{RESUME_TAG}.json").exists():
        # Killed while writing its very first checkpoint (best/last of epoch 1 are there,
        # the commit point is not): that run is redone from the start. Anything else
        # is not ours to overwrite.
        check_first_epoch_only(config, run_dir)
        return None
    saved = load_resume_state(run_dir)
    check_resumable(config, saved["record"]["recipe"], run_dir, int(saved["epoch"]))
    check_same_run(run_dir / f"{RESUME_TAG}.json", saved["record"])
    return saved
