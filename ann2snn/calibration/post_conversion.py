"""Post-conversion calibration: close the low-T gap with a few hundred images, no training.

At T = 1–2 an IF network's firing rates miss the ANN's activations by a systematic amount:
a neuron whose ANN value needs k spikes gets k − 1 or k + 1 at the target T (the "offset
spike", Hao et al., AAAI 2023), and the error of one layer shifts the input of the next
(Li et al., ICML 2021). Three methods, each its paper's:

* ``method="bias"`` — Li et al. 2021, *bias calibration*: per channel, the mean gap
  E[a_ANN − r_SNN] over calibration images is added to the bias of the layer that feeds
  the neuron (the conv, linear or BatchNorm before it, through residual additions).
  Measured on data, offline; a constant current that shifts the rate at every T.
* ``method="potential"`` — Li et al. 2021, *potential calibration*: the initial membrane
  v(0) is shifted by T·E[a_ANN − r_SNN], the charge T steps missed, per neuron (Li's
  formulation, ``granularity="neuron"``) or per channel (``"channel"``). Measured on data,
  offline, tuned for the T it was measured at. (``method="offset"``, the name this had
  before, is a deprecated alias of ``potential`` per channel.)
* ``method="cos"`` — Hao et al. 2023, *calibrating offset spikes*: no data; at inference,
  per sample and per neuron, each IF layer first pre-simulates ρ steps on its input,
  reads from its residual membrane whether it fired one spike too many (v < 0 after
  firing) or one too few (v ≥ θ), shifts its v(0) by at least one θ accordingly, and then
  runs its T steps from the start. It costs ρ extra steps per layer: the output of a
  network of L layers is ready after T + L·ρ steps, and every table reports that total.

``bias`` and ``potential`` work layer by layer from the first, so later layers are measured
on the already corrected outputs; a layer's correction is kept only if it brings the
network's output closer to the ANN's (``guard``). Here a_ANN is the ANN activation the
neuron replaced (clipped to what the neuron can emit, [0, θ]) and r_SNN the neuron's emitted
value averaged over the T wake steps. Cost: ``batches`` × (one ANN pass + one T-step SNN
pass) per layer. The result is an ordinary network of the same neurons (a bias, a v(0) per
channel or neuron, or a pre-simulation length), so it simulates and binarizes like any
other; NIR and ONNX exports refuse a COS network (its pre-simulation is not a graph op).
"""

from __future__ import annotations

import copy
import operator
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from .._util import positive_int
from ..conversion.thresholds import iter_inputs
from ..nn.network import SpikingNetwork, device_of, eval_mode
from ..nn.neurons import IFNeuron, SpikingNeuron
from ..simulation import Schedule, ann_activations, default_max_fold, spike_rates

__all__ = [
    "calibrate",
    "layer_gaps",
    "CALIBRATION_METHODS",
    "AUTO_CANDIDATES",
    "GRANULARITIES",
    "CalibrationLog",
]

#: Post-conversion calibration methods accepted by `calibrate` (and ``eval --calibrate``).
CALIBRATION_METHODS = ("bias", "potential", "cos")
#: What one correction covers: every neuron, every channel, or the whole layer.
GRANULARITIES = ("neuron", "channel", "layer")
#: What ``method="auto"`` tries (the methods that add no time step), keeping the one whose
#: output is closest to the ANN's on the calibration data.
AUTO_CANDIDATES = ("potential", "bias")
# Old names that still work, with a DeprecationWarning: name → (method, granularity).
_ALIASES = {"offset": ("potential", "channel")}

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
    #: Squared error of the calibrated network's output to the ANN's (calibration data).
    output_mse: float | None = None
    #: ``method="auto"``: each candidate's output error; the lowest was kept.
    candidates: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "T": self.T,
            "images": self.images,
            "seconds": self.seconds,
            "layers": self.layers,
            "output_mse": self.output_mse,
        }
        return out | ({"candidates": self.candidates} if self.candidates else {})


def _mean(t: Tensor, granularity: str = "channel") -> Tensor:
    """The mean over the batch ``[N, C, ...]`` kept at ``granularity``: ``"neuron"`` →
    ``[C, ...]``; ``"channel"`` → ``[C]`` (the mean over every dim but 1); ``"layer"`` →
    0-dim. A 1-d ``[N]`` gives a 0-dim mean."""
    t = t.float()
    if t.dim() < 2 or granularity == "layer":
        return t.mean()
    if granularity == "neuron":
        return t.mean(0)
    return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1)


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

    def __init__(self, ref: SpikingNetwork, inputs: list[Tensor], granularity: str = "channel"):
        self.means: list[dict[str, Tensor]] = []  # per batch: layer → E[a] per channel
        self.outputs: list[Tensor] = []
        self.ranks: dict[str, int] = {}
        thresholds = {name: n.threshold for name, n in ref.spiking_layers()}
        for x in inputs:
            acts, out = ann_activations(ref, x)
            self.outputs.append(out)  # [B, out...]
            self.means.append(
                {
                    name: _mean(torch.minimum(a.clamp_min(0), thresholds[name]), granularity)
                    for name, a in acts.items()
                }
            )
            self.ranks.update({name: a.dim() for name, a in acts.items()})
        self.granularity = granularity


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
            gap = ann_means[name] - _mean(rate, reference.granularity)
            gaps[name] = gaps.get(name, 0) + gap
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
    # T·gap: the charge T steps missed; shaped to broadcast over one step's [B, C, …]:
    # per neuron [C, ...] as it is, per channel [C] → [C, 1, ...], per layer 0-dim.
    shift = (T * gap).to(neuron.threshold.device)
    if shift.dim() == 1 and rank > 2:
        shift = shift.reshape((-1,) + (1,) * (rank - 2))
    old = neuron.v_offset
    neuron.v_offset = shift if old is None else old + shift

    def undo() -> None:
        neuron.v_offset = old

    return undo


def _check_args(snn: Any, method: str, granularity: str, T: int, batches: int, rounds: int) -> None:
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            "calibrate: snn must be a SpikingNetwork (from ann2snn.convert), got "
            f"{type(snn).__name__}"
        )
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibrate: method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    if granularity not in GRANULARITIES or (method == "bias" and granularity == "neuron"):
        allowed = GRANULARITIES[1:] if method == "bias" else GRANULARITIES
        raise ValueError(
            f"calibrate: granularity for method {method!r} must be one of "
            f"{', '.join(allowed)} (a bias is per output channel), got {granularity!r}"
        )
    positive_int("T", T)
    positive_int("batches", batches)
    if (snn.config.get("calibration") or {}).get("method") == "bias":
        # Its ANN pass runs through the shifted biases: targets would move with them.
        raise ValueError(
            "calibrate: this network already carries a bias calibration; calibrate the "
            "network ann2snn.convert returned (method 'potential' can be applied on top)"
        )
    positive_int("rounds", rounds)


def calibrate(
    snn: SpikingNetwork,
    data: Iterable | Tensor | None,
    T: int,
    method: str = "potential",
    batches: int = 8,
    sleep: int = 0,
    per_channel: bool | None = None,
    guard: bool = True,
    log: CalibrationLog | None = None,
    rounds: int = 1,
    margin: int | None = None,
    *,
    granularity: str | None = None,
    rho: int | None = None,
) -> SpikingNetwork:
    """A calibrated copy of ``snn`` for ``T`` wake steps (``snn`` is not changed).

    Args:
        snn: a converted network (`ann2snn.convert`), any neuron type (``"cos"``: IF).
        data: calibration images — the validation split (a DataLoader of (x, y)), never
            the test split — or a tensor ``[B, ...]``; ``"cos"`` needs none (None).
        T: the wake steps the network will run at (the gap is measured there).
        method: ``"potential"`` (v(0) shifted by the charge T steps missed; Li et al. 2021),
            ``"bias"`` (a per-channel bias on the layer feeding each neuron; Li et al. 2021)
            or ``"cos"`` (offset spikes detected and removed per sample at inference, ρ
            extra steps per layer; Hao et al. 2023); see the module doc. ``"potential"`` is
            the default: on the demo CNN and a 10-epoch ResNet-20 it beat ``"bias"`` at
            T = 1 and 2 without adding a step (docs/benchmarks.md §9b).
        batches: how many batches of ``data`` to measure each layer on.
        sleep: sleep steps after the wake steps (consistent IF); the rate stays per wake
            step.
        per_channel: deprecated; False is ``granularity="layer"``.
        guard: keep a layer's correction only if it lowers the squared error of the
            network's output to the ANN's output on the calibration batches (costs one
            more simulation per layer); False applies every correction.
        log: a `CalibrationLog` to fill (per-layer gaps, images, seconds).
        rounds: ``"potential"`` only: repeat the whole layer-by-layer pass this many
            times, each on the result of the last.
        margin: a sleep phase after every ``margin`` wake steps (the schedule of
            `ann2snn.simulate`'s ``margin``): calibrate on the schedule the network will
            run on.
        granularity: what one correction covers: ``"neuron"`` (default for potential, as
            Li et al.), ``"channel"`` (default for bias) or ``"layer"``.
        rho: ``"cos"``: pre-simulation steps per layer (ρ, default 4 as in the paper). A
            layer pre-simulates on the first ρ inputs it receives; with ρ > T the layers run
            ρ steps so the next ones can (`simulate` and `run` do this; only T are read).

    GN with τ = L at T = 1 and CIF with T = Q and enough sleep are exact already: their
    measured gap is zero and calibration leaves them as they are.
    """
    if method == "auto":
        return _best_of(AUTO_CANDIDATES, snn, data, T, batches, sleep, guard, log, margin)
    method, granularity = _resolve_method(method, granularity, per_channel)
    _check_args(snn, method, granularity, T, batches, rounds)
    if method != "cos" and data is None:
        raise ValueError(f"calibrate: method {method!r} needs calibration data, got None")
    if method == "cos":
        return _offset_spike_calibrated(snn, T, rho, log)
    if rounds > 1:
        if method != "potential":
            raise ValueError(
                "calibrate: rounds > 1 needs method='potential' (a bias calibration is "
                f"measured against the network as converted), got method={method!r}"
            )
        for _ in range(rounds - 1):
            snn = calibrate(
                snn,
                data,
                T,
                method,
                batches,
                sleep,
                None,
                guard,
                log,
                margin=margin,
                granularity=granularity,
            )
    net = copy.deepcopy(snn)
    dev = device_of(net)
    inputs = [x.to(dev) for x in iter_inputs(data, batches)]
    if not inputs:
        raise ValueError("calibrate: the calibration data yielded no batches")
    log = log if log is not None else CalibrationLog(method, T)
    log.method, log.T, log.images = method, T, sum(int(x.shape[0]) for x in inputs)
    start = time.perf_counter()
    with eval_mode(net, snn), torch.no_grad():
        reference = _Reference(snn, inputs, granularity)
        mse = _layer_by_layer(
            net,
            reference,
            inputs,
            method,
            T,
            Schedule(T, sleep, margin),
            guard,
            log,
            default_max_fold(dev),
        )
    log.seconds = time.perf_counter() - start
    log.output_mse = mse
    previous = net.config.get("calibration")
    net.config = {
        **net.config,
        "calibration": {
            "method": method,
            "T": T,
            "images": log.images,
            "granularity": granularity,
        },
    }
    if previous:
        net.config["calibration"]["after"] = previous
    return net


def _layer_by_layer(
    net: SpikingNetwork,
    reference: _Reference,
    inputs: list[Tensor],
    method: str,
    T: int,
    schedule: Schedule,
    guard: bool,
    log: CalibrationLog,
    max_fold: int,
) -> float:
    """Correct ``net``'s layers in order, each measured on the earlier ones' corrections;
    the output error to the ANN's at the end."""
    # One simulation measures every layer: the gaps of the layers still to come and
    # the output error, before and (with the guard) after each layer's correction.
    gaps, mse = _measure(reference, net, inputs, schedule, max_fold)
    for name, neuron in net.spiking_layers():
        feeding = _feeding_layer(net.body, name) if method == "bias" else None
        if method == "bias" and feeding is None:
            raise ValueError(
                f"calibrate: method 'bias' needs a conv, linear or BatchNorm layer feeding "
                f"neuron {name!r} (through additions only, read by nothing else); use "
                "method='potential' for this network"
            )
        gap = gaps[name]
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
    return mse


def _resolve_method(
    method: str, granularity: str | None, per_channel: bool | None
) -> tuple[str, str]:
    """(method, granularity) from the arguments, old names included (with a warning)."""
    if method in _ALIASES:
        new, default = _ALIASES[method]
        warnings.warn(
            f"calibrate: method={method!r} is deprecated; it is method={new!r} with "
            f"granularity={default!r} (Li et al. 2021's potential calibration, per channel)",
            FutureWarning,
            stacklevel=3,
        )
        method, granularity = new, granularity or default
    if per_channel is not None:
        warnings.warn(
            "calibrate: per_channel is deprecated; use granularity='channel' or 'layer'",
            FutureWarning,
            stacklevel=3,
        )
        granularity = granularity or ("channel" if per_channel else "layer")
    return method, granularity or ("neuron" if method == "potential" else "channel")


def _offset_spike_calibrated(
    snn: SpikingNetwork, T: int, rho: int | None, log: CalibrationLog | None
) -> SpikingNetwork:
    """COS: a copy whose IF neurons pre-simulate ``rho`` steps per sample (no data)."""
    rho = 4 if rho is None else positive_int("rho", rho)
    layers = list(snn.spiking_layers())
    if not layers or any(type(n).kernel is not IFNeuron.kernel for _, n in layers):
        kinds = sorted({type(n).__name__ for _, n in layers}) or ["none"]
        raise ValueError(
            "calibrate: method 'cos' detects offset spikes of IF neurons (reset by "
            f"subtraction, one spike per step); this network's neurons are {', '.join(kinds)}"
        )
    net = copy.deepcopy(snn)
    for _, neuron in net.spiking_layers():
        neuron.presim = rho
    if log is not None:
        log.method, log.T, log.images, log.seconds = "cos", T, 0, 0.0
    net.config = {
        **net.config,
        # The output of L layers is ready after T + L·ρ steps: each layer pre-simulates
        # ρ steps of its input before its first real step.
        "calibration": {"method": "cos", "T": T, "rho": rho, "presim_steps": len(layers) * rho},
    }
    return net


def _best_of(
    methods: tuple[str, ...],
    snn: SpikingNetwork,
    data: Any,
    T: int,
    batches: int,
    sleep: int,
    guard: bool,
    log: CalibrationLog | None,
    margin: int | None,
) -> SpikingNetwork:
    """``method="auto"``: calibrate with each of ``methods`` (those a network's layers
    allow) and keep the result whose output is closest to the ANN's."""
    start = time.perf_counter()
    results: dict[str, tuple[SpikingNetwork, CalibrationLog]] = {}
    for method in methods:
        trial = CalibrationLog(method, T)
        try:
            net = calibrate(
                snn, data, T, method, batches, sleep, guard=guard, log=trial, margin=margin
            )
        except ValueError:  # e.g. no biased layer in front of a neuron: not a candidate
            continue
        results[method] = (net, trial)
    if not results:
        raise ValueError(f"calibrate: none of {', '.join(methods)} applies to this network")
    best = min(results, key=lambda m: results[m][1].output_mse)
    net, trial = results[best]
    if log is not None:
        log.__dict__.update(trial.__dict__)
        log.candidates = {m: r[1].output_mse for m, r in results.items()}
        log.seconds = time.perf_counter() - start
    net.config["calibration"]["chosen_by"] = "auto"
    return net
