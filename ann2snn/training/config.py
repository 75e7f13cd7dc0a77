"""Training recipes: the validated `TrainConfig` and the papers' named presets.

A run is a function of one `TrainConfig` (see `ann2snn.train`); presets are data, not code
paths: ``TrainConfig.from_preset("qcfs", model="vgg16", dataset="cifar10")``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..nn.activations import THRESHOLD_PARAMS, list_activations

__all__ = ["TrainConfig", "PRESETS", "RESUMABLE_CHANGES"]

#: Named training recipes (methods.md §1.4, §2.4, §3.5, §4.5). Data, not code paths:
#: `TrainConfig.from_preset(name, model=..., dataset=..., **overrides)` applies one.
PRESETS: dict[str, dict[str, Any]] = {
    # QCFS (Bu et al., ICLR 2022): SGD 0.1, wd 5e-4, cosine over all epochs, no warm-up;
    # 300 epochs (the code comments that 300 beat its default 120); L = 4 as in the README
    # example (the paper recommends 4 or 8). CIFAR augmentation: AutoAugment + Cutout 16.
    "qcfs": dict(
        act="qcfs",
        levels=4,
        epochs=300,
        batch_size=128,
        lr=0.1,
        weight_decay=5e-4,
        autoaugment=True,
        cutout=16,
    ),
    # NQ (Huang et al., 2024): QCFS + training noise; code defaults lr 0.05, wd 5e-4,
    # 400 epochs, L = 4. Its σ calibration is an `on_epoch_end` hook; the reference code
    # selected by *test* SNN accuracy, we select on the validation split.
    "nq": dict(
        act="nq",
        levels=4,
        epochs=400,
        batch_size=128,
        lr=0.05,
        weight_decay=5e-4,
        autoaugment=True,
        cutout=16,
    ),
    # CASC (Li et al., 2024): clip-floor activation with Q = 8, wd 1e-4, label smoothing
    # 0.1, 5 warm-up epochs from 1e-6, then cosine to 0; 300 epochs.
    "casc": dict(
        act="clipq",
        levels=8,
        epochs=300,
        batch_size=128,
        lr=0.1,
        weight_decay=1e-4,
        label_smoothing=0.1,
        warmup_epochs=5,
        autoaugment=True,
        cutout=16,
    ),
    # GN (Lv et al., ICASSP 2024): a plain QCFS ANN with L = 8 and λ initialised to L
    # (8.0; pass act_kwargs={"init_threshold": L} too when overriding levels); lr 0.1,
    # wd 5e-4, cosine, 300 epochs.
    "gn": dict(
        act="qcfs",
        levels=8,
        epochs=300,
        batch_size=128,
        lr=0.1,
        weight_decay=5e-4,
        act_kwargs={"init_threshold": 8.0},
        autoaugment=True,
        cutout=16,
    ),
}

_AMP_CHOICES = ("auto", "bf16", "off")
# "auto": torch.compile on CUDA (fuses the quantized activations' elementwise ops and cuts
# kernel launches), eager on CPU (compilation would cost more than a short run saves).
_COMPILE_CHOICES = (
    "auto",
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)

# Recipe fields that may differ between an interrupted run and its resumption: they
# change where or how verbosely the run executes, not what it computes.
RESUMABLE_CHANGES = {
    "resume",
    "progress",
    "device",
    "num_workers",
    "data_dir",
    "out_dir",
    "compile",
    "download",
}


def fail(msg: str) -> None:
    """Raise the `ValueError` of an invalid `TrainConfig` field."""
    raise ValueError(f"TrainConfig: {msg}")


@dataclass
class TrainConfig:
    """Everything that defines a training run; validated on construction.

    ``out_dir`` defaults to ``runs/<dataset>-<model>-<act>-L<levels>``. ``amp``: "auto"
    (bf16 autocast on CUDA, off elsewhere), "bf16" or "off". ``channels_last``: "auto"
    (on: NHWC convolutions are faster on CUDA and on CPUs alike) or a bool. ``act_kwargs``
    go to the activation (e.g. ``init_threshold``).
    ``model``: a zoo name, ``torchvision:NAME``, ``timm:NAME`` or
    ``package.module:function`` (prepared with ``act``/``levels``/``pool``). ``init``: a
    weights file (safetensors or a torch state dict) loaded by name before training, for
    fine-tuning a pretrained ANN; each λ then starts at its ReLU's 99.9th percentile.
    ``sync_bn``: under torchrun on GPUs, BatchNorm statistics over the whole global batch
    (``torch.nn.SyncBatchNorm``); without it each rank normalises its own rows.
    ``threshold_param``: "log" (train log λ) or "raw" (train λ itself, as the papers do);
    ``threshold_decay``: weight decay on λ, None = True for raw and False for log.
    ``resume=True`` continues an interrupted run in ``out_dir`` (or starts it if empty).
    ``progress``: True (a live bar per epoch, then its line), "lines" (one plain line per
    epoch, no bar: the CLI's ``--no-progress``) or False (nothing).
    """

    model: str
    dataset: str
    data_dir: str | None = None
    act: str = "qcfs"
    levels: int = 4
    pool: str = "avg"
    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    seed: int = 42
    device: str = "auto"
    out_dir: str | None = None
    val_fraction: float = 0.1
    amp: str | bool = "auto"
    channels_last: str | bool = "auto"
    compile: str | bool = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    num_workers: int = 0
    autoaugment: bool = False
    cutout: int = 0
    act_kwargs: dict[str, Any] = field(default_factory=dict)
    threshold_param: str = "log"
    threshold_decay: bool | None = None
    init: str | None = None
    download: bool = False
    sync_bn: bool = False
    progress: bool | str = True
    resume: bool = False

    def __post_init__(self) -> None:
        self._check_recipe()
        self._check_runtime()
        self._check_activation()
        if self.init is not None:
            if not isinstance(self.init, str | os.PathLike) or not os.path.isfile(self.init):
                fail(f"init must be a weights file (.safetensors, .pth, .pt), got {self.init!r}")
            self.init = str(self.init)
        if self.out_dir is None:
            name = self.model.replace(":", "-").replace("/", "-")
            self.out_dir = f"runs/{self.dataset}-{name}-{self.act}-L{self.levels}"
        self.out_dir = str(self.out_dir)

    def _int(self, name: str, allow_zero: bool = False, allow_none: bool = False) -> None:
        v = getattr(self, name)
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
            fail(f"{name} must be an integer >= {0 if allow_zero else 1}, got {v!r}")

    def _check_recipe(self) -> None:
        """What is trained, on what, for how long, how fast."""
        for name in ("model", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                fail(f"{name} must be a non-empty name, got {getattr(self, name)!r}")
        if self.act not in list_activations():
            fail(f"unknown act {self.act!r}; choose one of {', '.join(list_activations())}")
        self._int("levels")
        if self.pool not in ("avg", "max"):
            fail(f"pool must be 'avg' (conversion-friendly) or 'max', got {self.pool!r}")
        self._int("epochs")
        self._int("batch_size")
        self._int("warmup_epochs", allow_zero=True)
        if self.warmup_epochs >= self.epochs:
            fail(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            fail(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            fail(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            fail(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            fail(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.val_fraction < 1:
            fail(
                "val_fraction must be in [0, 1) (0 = no validation split), got "
                f"{self.val_fraction!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            fail(f"seed must be an integer, got {self.seed!r}")

    def _check_runtime(self) -> None:
        """Where and how it runs, and how much data it reads."""
        if self.progress not in (True, False, "lines"):
            fail(f"progress must be True, False or 'lines', got {self.progress!r}")
        try:
            if self.device != "auto":
                torch.device(self.device)
        except (RuntimeError, TypeError):
            fail(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if isinstance(self.amp, bool):  # amp=True/False as shorthands
            self.amp = "bf16" if self.amp else "off"
        if self.amp not in _AMP_CHOICES:
            fail(f"amp must be one of {', '.join(_AMP_CHOICES)} (or a bool), got {self.amp!r}")
        if self.compile not in _COMPILE_CHOICES and not isinstance(self.compile, bool):
            fail(
                f"compile must be a bool or one of {', '.join(_COMPILE_CHOICES)}, got "
                f"{self.compile!r}"
            )
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            fail(f"channels_last must be 'auto' or a bool, got {self.channels_last!r}")
        self._int("limit_train", allow_none=True)
        self._int("limit_test", allow_none=True)
        self._int("num_workers", allow_zero=True)
        self._int("cutout", allow_zero=True)

    def _check_activation(self) -> None:
        """The activation's own settings."""
        if not isinstance(self.act_kwargs, dict):
            fail(f"act_kwargs must be a dict, got {type(self.act_kwargs).__name__}")
        if self.threshold_param not in THRESHOLD_PARAMS:
            fail(
                f"threshold_param must be one of {', '.join(THRESHOLD_PARAMS)}, "
                f"got {self.threshold_param!r}"
            )
        if "threshold_param" in self.act_kwargs:
            fail("set threshold_param as its own field, not in act_kwargs")
        if self.threshold_decay is not None and not isinstance(self.threshold_decay, bool):
            fail(
                "threshold_decay must be None (follow threshold_param) or a bool, got "
                f"{self.threshold_decay!r}"
            )

    @property
    def decays_thresholds(self) -> bool:
        """Whether weight decay reaches λ: ``threshold_decay``, or when None, True for a
        ``raw`` λ (the papers' code) and False for ``log`` (decay on log λ pulls λ to 1)."""
        if self.threshold_decay is not None:
            return self.threshold_decay
        return self.threshold_param == "raw"

    def activation_kwargs(self) -> dict[str, Any]:
        """Keywords for the activation factory: ``act_kwargs`` plus ``threshold_param``
        when it is not the default (so a user's activation without it keeps working)."""
        extra = {"threshold_param": self.threshold_param} if self.threshold_param != "log" else {}
        return {**self.act_kwargs, **extra}

    def loader_kwargs(self) -> dict[str, Any]:
        """Keywords of `ann2snn.data.create_loaders` this run's data is made with (all but
        the dataset name and the device)."""
        keys = (
            "data_dir",
            "batch_size",
            "val_fraction",
            "seed",
            "num_workers",
            "autoaugment",
            "cutout",
            "limit_train",
            "limit_test",
            "download",
        )
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A config from `PRESETS[name]` with ``overrides`` (``model`` and ``dataset`` needed)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})
