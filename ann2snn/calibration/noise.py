"""NQ noise calibration: estimate each layer's residual error σ by simulating the SNN.

Huang et al. (2024) train the ANN with ``a = h(z) − σ_l·ε`` (`NoisyQCFS`) where σ_l is
the spread of the gap between the layer's QCFS activation and its IF firing rate × θ
at T_n steps. After every epoch we convert the current model to IF neurons (a copy;
the model is not touched until σ is written), run the validation split through it
once as the ANN and once as the SNN over T_n steps (the T_n steps folded into the
batch, so the SNN pass costs about T_n forward passes), and set

    σ_l = sqrt( mean over batches of var(q(z_l) − r_l) )

where q(z_l) is the layer's QCFS output in the ANN pass and r_l its mean output over
the T_n steps in the SNN pass. The gap includes the error propagated from earlier
layers (as in the reference code). The same pass gives the SNN's validation accuracy
at T_n, which NQ uses for model selection (the reference code selects on the test
set; we never do).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import nn

from ..conversion.converter import convert
from ..nn.activations import NoisyQCFS
from ..nn.network import device_of
from ..simulation import Schedule, ann_activations, spike_rates

__all__ = ["NoiseCalibration", "calibrate_noise", "noisy_layers", "set_noise"]


@dataclass
class NoiseCalibration:
    """Result of one calibration: σ per layer, the SNN's accuracy at T_n, the cost."""

    sigma: dict[str, float] = field(default_factory=dict)
    snn_accuracy: float = 0.0
    images: int = 0
    seconds: float = 0.0
    steps: int = 4


def noisy_layers(model: nn.Module) -> dict[str, NoisyQCFS]:
    """Qualified name → `NoisyQCFS` module of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NoisyQCFS)}


@torch.no_grad()
def set_noise(model: nn.Module, sigma: dict[str, float]) -> None:
    """Write per-layer σ into the model's `NoisyQCFS` modules (names as in `noisy_layers`)."""
    layers = noisy_layers(model)
    unknown = sorted(set(sigma) - set(layers))
    if unknown:
        raise KeyError(f"no NoisyQCFS layer named {unknown}; layers are {sorted(layers)}")
    for name, value in sigma.items():
        layers[name].sigma.fill_(float(value))


@torch.no_grad()
def calibrate_noise(
    model: nn.Module,
    data: Iterable,
    steps: int = 4,
    max_batches: int | None = None,
    apply: bool = True,
    device: str | torch.device | None = None,
) -> NoiseCalibration:
    """Estimate σ for every quantized layer of ``model`` from IF simulation at ``steps``.

    Args:
        model: a network with `NoisyQCFS` (or `QCFS`) activations; its mode is restored.
        data: the validation split (DataLoader of (x, y)); never the test split.
        steps: T_n, the simulation length the noise models (NQ's default 4).
        max_batches: use at most this many batches of ``data``.
        apply: write the new σ into the model's `NoisyQCFS` layers.
    """
    start = time.perf_counter()
    was_training = model.training
    try:  # the SNN is a copy: the model's mode is restored at once, also on errors
        snn = convert(model.eval(), neuron="if")
    finally:
        model.train(was_training)
    if device is not None:
        snn = snn.to(device)
    dev = device_of(snn)
    layers = list(snn.spiking_layers())
    var_sum = {name: 0.0 for name, _ in layers}
    batches, correct, images = 0, 0, 0
    for i, (x, y) in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(dev), y.to(dev)
        # ANN pass (noise off: eval mode): q(z_l) per layer, [B, ...]; SNN pass over T_n
        # steps: each layer's mean emitted value, [B, ...].
        acts, _ = ann_activations(snn, x)
        rates, out = spike_rates(snn, x, Schedule(steps))  # out: [B, classes]
        for name, _ in layers:
            gap = acts[name] - rates[name]
            var_sum[name] += float(gap.var()) if gap.numel() > 1 else 0.0
        correct += int((out.argmax(-1) == y).sum())
        images += y.shape[0]
        batches += 1
    if batches == 0:
        raise ValueError("calibrate_noise: the data yielded no batches")
    sigma = {name: (v / batches) ** 0.5 for name, v in var_sum.items()}
    if apply:
        targets = noisy_layers(model)
        set_noise(model, {k: v for k, v in sigma.items() if k in targets})
    return NoiseCalibration(
        sigma=sigma,
        snn_accuracy=correct / max(images, 1),
        images=images,
        seconds=time.perf_counter() - start,
        steps=steps,
    )


#: Validation batches used per calibration by default: σ is one scalar per layer, and a
#: thousand-odd images estimate it well, at a few percent of an epoch's cost.
DEFAULT_CALIBRATION_BATCHES = 10


def nq_epoch_hook(
    steps: int = 4,
    max_batches: int | None = DEFAULT_CALIBRATION_BATCHES,
    log: TextIO | None = sys.stderr,
    augment: bool = False,
) -> Any:
    """A `train` hook: after each epoch, re-estimate σ on (the first ``max_batches``
    batches of; None = all of) the validation split, print σ per layer to ``log``, and
    select the checkpoint by the SNN's validation accuracy at ``steps``.

    ``augment=True`` estimates σ on augmented training batches instead (what the NQ
    reference code does: its calibration loader carries the training augmentation);
    selection still uses the SNN's accuracy on the validation split (one more pass).
    """

    def on_epoch_end(model: nn.Module, epoch: int, loaders: Any, record: dict) -> dict:
        data = loaders.train if augment else loaders.val
        cal = calibrate_noise(model, data, steps=steps, max_batches=max_batches)
        snn_val = cal.snn_accuracy
        if augment:  # σ from training images; the selection score stays on validation
            snn_val = calibrate_noise(
                model, loaders.val, steps=steps, max_batches=max_batches, apply=False
            ).snn_accuracy
        if log is not None:
            sigmas = ", ".join(f"{name} {value:.3f}" for name, value in cal.sigma.items())
            source = "augmented training" if augment else "validation"
            print(
                f"  NQ σ after epoch {epoch} (T_n={steps}, {cal.images} {source} images, "
                f"{cal.seconds:.2f}s; SNN val {100 * snn_val:.2f}%): {sigmas}",
                file=log,
            )
        return {
            "sigma": cal.sigma,
            "sigma_data": "train-augmented" if augment else "val",
            "snn_val_acc": snn_val,
            "calibration_seconds": cal.seconds,
            "select_metric": snn_val,
        }

    return on_epoch_end
