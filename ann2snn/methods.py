"""The method table: one row per paper, read by the demo, the CLI, export, training and
the benchmarks, so which activation, neuron, τ, sleep and hook a method uses is written
once.

A method is an ANN-side choice (the activation trained, its levels) and an SNN-side
choice (the neuron, its options, the schedule). The two sides stay independent: any
trained activation converts with any neuron; a row is only the published pairing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .calibration.noise import nq_epoch_hook

__all__ = [
    "Method",
    "METHODS",
    "get_method",
    "neuron_options",
    "epoch_hook",
    "needs_threshold_data",
]


@dataclass(frozen=True)
class Method:
    """One paper's recipe.

    Attributes:
        name: key in `METHODS`.
        title: how tables name it (``{L}`` is replaced by the levels).
        paper: the publication.
        act: the ANN activation trained (`ann2snn.list_activations`).
        levels: its default quantization levels L (CASC: Q).
        neuron: the spiking neuron it converts to (`ann2snn.list_neurons`).
        sleep: input-free steps after the wake steps (CASC's sleep phase; 0 = none).
        run_per_T: whether each T is a separate run (wake steps then sleep), rather than one
            run read after every step.
    """

    name: str
    title: str
    paper: str
    act: str
    levels: int
    neuron: str
    sleep: int = 0
    run_per_T: bool = False

    def label(self, levels: int | None = None) -> str:
        """The row label, e.g. ``"QCFS+IF (L=4)"``."""
        return self.title.format(L=levels or self.levels)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("qcfs", "QCFS+IF (L={L})", "Bu et al., ICLR 2022", "qcfs", 4, "if"),
        Method("gn", "QCFS+GN (tau={L})", "Lv, Fang et al., 2024", "qcfs", 4, "gn"),
        Method("nq", "NQ+IF (L={L})", "Huang et al., 2024", "nq", 4, "if"),
        Method("casc", "CASC (Q={L})", "Li et al., 2024", "clipq", 8, "cif", 8, True),
    )
}


def get_method(name: str) -> Method:
    """The row of `METHODS` named ``name``; a clear error naming the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def neuron_options(neuron: str, levels: int | None, tau: int | None = None) -> dict[str, Any]:
    """Conversion options a neuron takes from the ANN: a group neuron's τ defaults to the
    ANN's levels L (τ = L is exact at T = 1)."""
    if tau is not None:
        return {"tau": tau}
    if neuron == "gn" and levels:
        return {"tau": levels}
    return {}


def needs_threshold_data(act: str | None) -> bool:
    """Whether converting a network trained with ``act`` needs data for its thresholds: a
    ReLU network has no trained λ, so θ comes from activation percentiles."""
    return act == "relu"


def epoch_hook(act: str | None, **options: Any) -> Callable[..., Any] | None:
    """The after-epoch hook a training method needs, or None: NQ re-estimates each
    layer's noise σ by simulating the SNN on the validation split after every epoch
    (``options`` go to `ann2snn.calibration.noise.nq_epoch_hook`)."""
    return nq_epoch_hook(**options) if act == "nq" else None
