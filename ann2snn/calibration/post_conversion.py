"""Post-conversion calibration: close the low-T gap with a few hundred images, no training.

At T = 1–2 an IF network's firing rates miss the ANN's activations by a systematic,
per-channel amount: a neuron whose ANN value needs k spikes gets k − 1 or k + 1 at the
target T (the "offset spike", Hao et al., ICLR 2023), and the error of one layer shifts
the input of the next (Li et al., ICML 2021). `calibrate` measures that gap on
calibration images (the validation split) and removes its mean, layer by layer from
the first, so later layers are calibrated on the already corrected outputs:

* ``method="bias"``   (Li et al., 2021, bias calibration): per channel, the mean gap
  E[a_ANN − r_SNN] is added to the bias of the layer that feeds the neuron (the conv,
  linear or BatchNorm before it, through residual additions). A constant current: it
  shifts the rate at every T, the network's structure is unchanged.
* ``method="offset"`` (Hao et al., 2023, offset spikes): per channel, the initial
  membrane v(0) is shifted by T·E[a_ANN − r_SNN] — the missing charge of T steps, i.e.
  the mean offset in spikes times θ. Tuned for the T it was measured at.

Here a_ANN is the ANN activation the neuron replaced (the QCFS/ReLU output of the same
graph run as the ANN, clipped to what the neuron can emit, [0, θ]) and r_SNN the neuron's
emitted value averaged over the T wake steps. The result is an ordinary network of the
same neurons (a bias or a v(0) per channel), so it simulates, exports and binarizes
like any other. Cost per layer: ``batches`` × (one ANN pass + one T-step SNN pass).
"""

from __future__ import annotations

import copy
import operator
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from .._util import positive_int
from ..conversion.thresholds import iter_inputs
from ..nn.network import SpikingNetwork, device_of, eval_mode
from ..nn.neurons import SpikingNeuron
from ..simulation import Schedule, ann_activations, default_max_fold, spike_rates

__all__ = ["calibrate", "layer_gaps", "CALIBRATION_METHODS", "CalibrationLog"]

#: Post-conversion calibration methods accepted by `calibrate` (and ``eval --calibrate``).
CALIBRATION_METHODS = ("bias", "offset")

# Layers whose per-output-channel bias can take the correction (their output is affine in
# the bias); additions pass it through to their first operand.
_BIASED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass
class CalibrationLog:
    """What `calibrate` did: per layer, the mean |gap| before (in units of θ) and the
    correction's size; the images used and the time taken."""

    method: str
    T: int
    images: int = 0
    seconds: float = 0.0
    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "T": self.T,
            "images": self.images,
            "seconds": self.seconds,
            "layers": self.layers,
        }


def _channel_mean(t: Tensor) -> Tensor:
    """Mean over every dim but the channel dim 1: ``[N, C, ...]`` → ``[C]``; a 1-d
    ``[N]`` gives a 0-dim mean."""
    if t.dim() < 2:
        return t.float().mean()
    return t.float().transpose(0, 1).reshape(t.shape[1], -1).mean(1)


def _feeding_layer(body: nn.Module, neuron_name: str) -> nn.Module | None:
    """The conv/linear/BatchNorm whose output reaches neuron ``neuron_name`` through
    additions only, and nothing else reads (so its bias shifts this neuron alone)."""
    if not isinstance(body, fx.GraphModule):
        return None
    modules = dict(body.named_modules())
    node = next(
        (n for n in body.graph.nodes if n.op == "call_module" and n.target == neuron_name), None
    )
    src = node.args[0] if node is not None and node.args else None
    while isinstance(src, fx.Node) and len(src.users) == 1:
        if src.op == "call_module" and isinstance(modules.get(src.target), _BIASED):
            return modules[src.target]
        if src.op == "call_function" and src.target in _ADDS and src.args:
            src = src.args[0]
            continue
        return None
    return None


def _add_bias(layer: nn.Module, delta: Tensor) -> None:
    """``layer.bias += delta`` (delta ``[C]`` or 0-dim), creating a zero bias if absent."""
    channels = (
        layer.weight.shape[0]
        if not isinstance(layer, nn.modules.batchnorm._BatchNorm)
        else layer.num_features
    )
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(channels, device=layer.weight.device))
    with torch.no_grad():
        layer.bias.add_(delta.to(layer.bias.dtype).expand(channels))


class _Reference:
    """The ANN side, computed once per calibration batch on the network as converted (a
    bias calibrated into the copy would move the copy's ANN pass too): per neuron layer
    the per-channel mean of its activation clipped to [0, θ] (``[C]``), and the network's
    output ``[B, out...]``. Means are linear, so E[a − r] = E[a] − E[r] needs no stored
    activation maps."""

    def __init__(self, ref: SpikingNetwork, inputs: list[Tensor]):
        self.means: list[dict[str, Tensor]] = []  # per batch: layer → E[a] per channel
        self.outputs: list[Tensor] = []
        self.ranks: dict[str, int] = {}
        thresholds = {name: n.threshold for name, n in ref.spiking_layers()}
        for x in inputs:
            acts, out = ann_activations(ref, x)
            self.outputs.append(out)  # [B, out...]
            self.means.append(
                {
                    name: _channel_mean(torch.minimum(a.clamp_min(0), thresholds[name]))
                    for name, a in acts.items()
                }
            )
            self.ranks.update({name: a.dim() for name, a in acts.items()})


def _measure(
    reference: _Reference,
    net: SpikingNetwork,
    inputs: list[Tensor],
    schedule: Schedule,
    max_fold: int,
) -> tuple[dict[str, Tensor], float]:
    """One T-step simulation of ``net`` per batch, every layer observed at once: per layer
    E[a_ANN − r_SNN] per channel (``[C]``, averaged over the batches), and the squared
    error of the network's time-averaged output to the ANN's (mean over elements)."""
    gaps: dict[str, Tensor] = {}
    mse = 0.0
    for x, ann_means, ann_out in zip(inputs, reference.means, reference.outputs):
        # The readout: the network's outputs summed over every step, per wake step.
        rates, snn_out = spike_rates(net, x, schedule, max_fold)
        mse += float((ann_out - snn_out).square().mean())
        for name, rate in rates.items():  # rate: [B, C, ...] mean emitted value
            gaps[name] = gaps.get(name, 0) + (ann_means[name] - _channel_mean(rate))
    return {k: v / len(inputs) for k, v in gaps.items()}, mse / len(inputs)


def layer_gaps(
    snn: SpikingNetwork,
    data: Iterable | Tensor,
    T: int,
    batches: int = 8,
    sleep: int = 0,
    reference: SpikingNetwork | None = None,
) -> dict[str, float]:
    """Per neuron layer: mean over channels of |E[a_ANN − r_SNN]| in units of θ, at T.

    The ANN side runs on ``reference`` (default ``snn`` itself); pass the network as
    converted to measure a bias-calibrated one against the ANN it came from."""
    positive_int("T", T)
    ref = reference if reference is not None else snn
    dev = device_of(snn)
    inputs = [x.to(dev) for x in iter_inputs(data, batches)]
    out: dict[str, float] = {}
    with eval_mode(snn, ref), torch.no_grad():
        gaps, _ = _measure(
            _Reference(ref, inputs), snn, inputs, Schedule(T, sleep), default_max_fold(dev)
        )
        for name, neuron in snn.spiking_layers():
            out[name] = float(gaps[name].abs().mean()) / float(neuron.threshold)
    return out


def _apply(
    method: str, neuron: SpikingNeuron, feeding: nn.Module | None, gap: Tensor, T: int, rank: int
):
    """Apply the correction for ``gap`` (``[C]`` or 0-dim); returns a function undoing it."""
    if method == "bias":
        _add_bias(feeding, gap)
        return lambda: _add_bias(feeding, -gap)
    # T·gap: the charge T steps missed; shaped to broadcast over one step's [B, C, …].
    shift = (T * gap).to(neuron.threshold.device)
    if shift.dim():
        shift = shift.reshape((-1,) + (1,) * max(rank - 2, 0))
    old = neuron.v_offset
    neuron.v_offset = shift if old is None else old + shift

    def undo() -> None:
        neuron.v_offset = old

    return undo


def _check_args(snn: Any, method: str, T: int, batches: int, rounds: int) -> None:
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            "calibrate: snn must be a SpikingNetwork (from ann2snn.convert), got "
            f"{type(snn).__name__}"
        )
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibrate: method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    positive_int("T", T)
    positive_int("batches", batches)
    if (snn.config.get("calibration") or {}).get("method") == "bias":
        # Its ANN pass runs through the shifted biases: targets would move with them.
        raise ValueError(
            "calibrate: this network already carries a bias calibration; calibrate the "
            "network ann2snn.convert returned (method 'offset' can be applied on top)"
        )
    positive_int("rounds", rounds)


def calibrate(
    snn: SpikingNetwork,
    data: Iterable | Tensor,
    T: int,
    method: str = "bias",
    batches: int = 8,
    sleep: int = 0,
    per_channel: bool = True,
    guard: bool = True,
    log: CalibrationLog | None = None,
    rounds: int = 1,
    margin: int | None = None,
) -> SpikingNetwork:
    """A calibrated copy of ``snn`` for ``T`` wake steps (``snn`` is not changed).

    Args:
        snn: a converted network (`ann2snn.convert`), any neuron type.
        data: calibration images — the validation split (a DataLoader of (x, y)), never
            the test split — or a tensor ``[B, ...]``.
        T: the wake steps the network will run at (the gap is measured there).
        method: ``"bias"`` (a per-channel bias on the layer feeding each neuron) or
            ``"offset"`` (a per-channel shift of each neuron's v(0)); see the module doc.
        batches: how many batches of ``data`` to measure each layer on.
        sleep: sleep steps after the wake steps (consistent IF); the rate stays per wake
            step.
        per_channel: False measures and corrects one scalar per layer.
        guard: keep a layer's correction only if it lowers the squared error of the
            network's output to the ANN's output on the calibration batches (costs one
            more simulation per layer); False applies every correction.
        log: a `CalibrationLog` to fill (per-layer gaps, images, seconds).
        rounds: ``"offset"`` only: repeat the whole layer-by-layer pass this many times,
            each on the result of the last (what one linearised step left is measured
            and removed again).
        margin: a sleep phase after every ``margin`` wake steps (the schedule of
            `ann2snn.simulate`'s ``margin``): calibrate on the schedule the network will
            run on.

    GN with τ = L at T = 1 and CIF with T = Q and enough sleep are exact already: their
    measured gap is zero and calibration leaves them as they are.
    """
    _check_args(snn, method, T, batches, rounds)
    if rounds > 1:
        if method != "offset":
            raise ValueError(
                "calibrate: rounds > 1 needs method='offset' (a bias calibration is measured "
                f"against the network as converted), got method={method!r}"
            )
        for _ in range(rounds - 1):
            snn = calibrate(
                snn, data, T, method, batches, sleep, per_channel, guard, log, margin=margin
            )
    schedule = Schedule(T, sleep, margin)
    net = copy.deepcopy(snn)
    dev = device_of(net)
    inputs = [x.to(dev) for x in iter_inputs(data, batches)]
    if not inputs:
        raise ValueError("calibrate: the calibration data yielded no batches")
    log = log if log is not None else CalibrationLog(method, T)
    log.method, log.T, log.images = method, T, sum(int(x.shape[0]) for x in inputs)
    start = time.perf_counter()
    max_fold = default_max_fold(dev)
    with eval_mode(net, snn), torch.no_grad():
        reference = _Reference(snn, inputs)
        # One simulation measures every layer: the gaps of the layers still to come and
        # the output error, before and (with the guard) after each layer's correction.
        gaps, mse = _measure(reference, net, inputs, schedule, max_fold)
        for name, neuron in net.spiking_layers():
            feeding = _feeding_layer(net.body, name) if method == "bias" else None
            if method == "bias" and feeding is None:
                raise ValueError(
                    f"calibrate: method 'bias' needs a conv, linear or BatchNorm layer feeding "
                    f"neuron {name!r} (through additions only, read by nothing else); use "
                    "method='offset' for this network"
                )
            gap = gaps[name] if per_channel else gaps[name].mean()
            theta = float(neuron.threshold)
            entry = {
                "mean_abs_gap_over_theta": float(gap.abs().mean()) / theta,
                "output_mse_before": mse,
            }
            undo = _apply(method, neuron, feeding, gap, T, reference.ranks[name])
            # The corrected network, measured once: it decides the guard and gives the
            # next layers' gaps (the layers before are unchanged from here on).
            after_gaps, after = _measure(reference, net, inputs, schedule, max_fold)
            if guard:
                # Keep the correction only where it brings the network's output closer to
                # the ANN's (matching a layer's mean can move the output away, e.g. at
                # T = 1 where a neuron emits 0 or θ).
                entry["output_mse_after"] = after
                entry["kept"] = after <= mse
            if not guard or entry["kept"]:
                gaps, mse = after_gaps, after
            else:
                undo()
            log.layers[name] = entry
    log.seconds = time.perf_counter() - start
    previous = net.config.get("calibration")
    net.config = {
        **net.config,
        "calibration": {"method": method, "T": T, "images": log.images, "per_channel": per_channel},
    }
    if previous:
        net.config["calibration"]["after"] = previous
    return net
