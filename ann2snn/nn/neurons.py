"""Spiking neurons on one charge → fire → reset skeleton.

All neurons here are integrate-and-fire with reset by subtraction; they differ only in
how many "spike quanta" they emit per step (the fire part of each `kernel`):

* `IFNeuron`      one spike of size θ when v ≥ θ                        (QCFS, NQ)
* `GroupNeuron`   τ members with thresholds iθ/τ, up to τ quanta of θ/τ  (GN)
* `ConsistentIF`  may retract spikes (negative spikes), net count ≤ wake steps (CASC)

Shapes: single-step input is ``[B, ...]``; multi-step input is time-major ``[T, B, ...]``.
Inside a converted network (`ann2snn.convert`) stateless layers fold T into the batch,
so neurons receive ``[T·B, ...]`` and are told T by the network (``folded_steps``, the
`ann2snn.nn.state.Stateful` contract).

The membrane and θ are kept in `ann2snn.nn.state.state_dtype` of the layers' dtype: fp32
for fp32, bf16 and fp16 layers (half types would lose the small residues that carry
information across steps), fp64 for fp64 layers.

Each neuron's whole step is one function of tensors (`kernel`): run as is, it is a few
in-place elementwise passes; with ``compiled=True`` the same function goes through
`torch.compile` and becomes one fused loop (CPU) or kernel (GPU), which matters for the
neurons with more passes (CIF has nine).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .._util import finite_number, positive_int
from ._compile import compile_unavailable, compiled_kernel, flat_views
from .state import Stateful, state_dtype, state_tensor

__all__ = [
    "SpikingNeuron",
    "IFNeuron",
    "GroupNeuron",
    "ConsistentIF",
    "neurons",
    "create_neuron",
    "list_neurons",
    "register_neuron",
    "neuron_class",
    "compile_unavailable",
]


def _spec_of(act: nn.Module):
    """The `ann2snn.SpikeSpec` a quantized activation declares (θ, shift, levels)."""
    spec = getattr(act, "spike_spec", None)
    if not callable(spec):
        raise TypeError(
            f"{type(act).__name__} declares no spike_spec(); build the neuron with "
            "from_threshold(theta), or convert with a calibration loader"
        )
    return spec()


class SpikingNeuron(Stateful):
    """Skeleton: ``step(x) = charge → fire → reset → emit``.

    Subclasses implement `kernel` (charge the membrane, count the spike quanta per
    element, reset by subtraction of ``count·quantum``, write ``count·quantum`` as the
    emitted value) and `kernel_args` (its state and scalars). The emitted value is
    ``count·quantum``, so a layer's time-averaged output is its firing rate times the
    spike value, comparable with the ANN activation.

    Args:
        threshold: θ, a positive scalar (a per-layer value, like QCFS's λ).
        v_init: initial membrane as a fraction of θ (QCFS/GN use ½ for the ½-shift).
        step_mode: ``"s"`` (input ``[B, ...]``, one step) or ``"m"`` (input ``[T, B, ...]``).
        compiled: run `kernel` through `torch.compile` (one fused pass per step; the first
            call compiles, a few seconds, once per process and neuron type).
    """

    #: Whether a network of these neurons can express max-pooling (see `ann2snn.LIPool`).
    allows_maxpool: bool = False
    #: Whether `ann2snn.convert` folds BatchNorm into the layer before by default (neurons
    #: that run input-free sleep steps need it: the sleep phase zeroes every bias).
    folds_batchnorm: bool = False

    def __init__(
        self,
        threshold: float | Tensor,
        v_init: float = 0.5,
        step_mode: str = "s",
        compiled: bool = False,
    ):
        super().__init__(step_mode)
        try:
            # fp32, or fp64 for a fp64 λ: a float64 network keeps its thresholds exact.
            threshold = state_tensor(threshold)
        except (TypeError, RuntimeError, ValueError):
            raise TypeError(
                f"threshold must be a positive finite scalar, got {threshold!r}"
            ) from None
        if threshold.numel() != 1 or not bool(threshold > 0) or not bool(threshold.isfinite()):
            raise ValueError(
                f"threshold must be a positive finite scalar, got {threshold.tolist()}"
            )
        finite_number("v_init", v_init)
        self.register_buffer("threshold", threshold.reshape(()))
        # Per-channel shift of v(0) set by post-conversion calibration (`ann2snn.calibrate`),
        # shaped to broadcast over one step's input: [C] for [B, C], [C, 1, 1] for
        # [B, C, H, W]; None (no buffer in the state dict) until then.
        self.register_buffer("v_offset", None)
        self.v_init = float(v_init)
        # Inside a network the ANN activation this neuron replaced; used for the ANN pass.
        self.ann_activation: nn.Module | None = None
        self.v: Tensor | None = None
        # Deploy form (`ann2snn.binarize`): emit spike counts (0/1, CIF ±1) instead of
        # count·quantum; the value is restored by a scale after the neuron.
        self.binary = False
        if compiled and (why := compile_unavailable(self.threshold.device)):
            raise RuntimeError(why)
        self.compiled = bool(compiled)
        # Offset-spike calibration (COS, `ann2snn.calibrate(..., method="cos")`): pre-simulate
        # this many steps on a fresh state's first inputs and shift v(0) before the real run.
        self.presim = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A calibrated network's state dict loads into a freshly converted one (and back):
        # `v_offset` is adopted when the dict has it and dropped when it has not.
        key = prefix + "v_offset"
        if key in state_dict:
            self.v_offset = torch.empty_like(state_dict[key], device=self.threshold.device)
        else:
            self.v_offset = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_activation(cls, act: nn.Module, **kwargs) -> SpikingNeuron:
        """Neuron replacing a trained quantized activation: θ = λ, v(0) = shift·θ."""
        spec = _spec_of(act)
        kwargs.setdefault("v_init", spec.shift)
        return cls(spec.threshold, **kwargs)

    @classmethod
    def from_threshold(cls, threshold: float | Tensor, **kwargs) -> SpikingNeuron:
        """Neuron with an explicit threshold (e.g. a calibrated ReLU percentile)."""
        return cls(threshold, **kwargs)

    # --- the skeleton -----------------------------------------------------------------
    @property
    def quantum(self) -> Tensor:
        """Value of one spike (and the amount the membrane is reduced by per spike)."""
        return self.threshold

    @property
    def spike_value(self) -> Tensor:
        """What one spike event adds to the output: the quantum, or 1 when binary."""
        return torch.ones_like(self.threshold) if self.binary else self.quantum

    @property
    def v0(self) -> Tensor:
        """Initial membrane potential shared by every element (a scalar); `v_offset`, if
        set, is added per channel (`initial_membrane`)."""
        return self.v_init * self.threshold

    def initial_membrane(self) -> Tensor:
        """v(0) as it starts: the scalar `v0`, or ``v0 + v_offset`` (per channel)."""
        return self.v0 if self.v_offset is None else self.v0 + self.v_offset

    def init_state(self, x: Tensor) -> None:
        """Allocate the state for input ``x`` of shape ``[B, ...]``."""
        # One pass (a broadcast copy of v(0), 0-dim or per channel): no zero fill first,
        # no host sync.
        self.v = torch.empty_like(x, dtype=state_dtype(x.dtype)).copy_(self.initial_membrane())

    # --- the step: one function of tensors --------------------------------------------
    # The state is updated in place: simulation runs without autograd, and each avoided
    # allocation is one pass less over a [B, C, H, W] tensor per step. Spike counts are
    # written into a float buffer, which avoids a bool→float cast that on the CPU costs
    # more than the rest of the step together.
    @staticmethod
    def kernel(v: Tensor, x: Tensor, out: Tensor, *args) -> Tensor:
        """charge → fire → reset, in place: ``v`` (fp32 membrane) ← ``v + x``; ``out``
        (fp32, v's shape) ← emitted ``count·quantum``; ``v`` ← ``v − out``. Returns ``out``.

        ``args`` are the tensors and numbers of `kernel_args` (state beyond v, scalars).
        Written with in-place/``out=`` ops only, so that run eagerly it makes no temporary
        and compiled it is one pass.
        """
        raise NotImplementedError

    def kernel_args(self) -> tuple:
        """Extra arguments of `kernel` for this step (after v, x, out)."""
        return (self.threshold,)

    def begin_step(self) -> None:
        """Bookkeeping before each step's kernel (CIF counts its wake steps here)."""

    def end_step(self) -> None:
        """Bookkeeping after each step's kernel (CIF swaps its count buffers here)."""

    def step(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """One time step: ``x`` ``[B, ...]`` → emitted value ``[B, ...]`` in x's dtype.

        ``out``, if given, receives the result (a slot of a preallocated ``[T, B, ...]``).
        """
        if self.presim and self.v is None:
            raise RuntimeError(
                f"{type(self).__name__} with offset-spike calibration (presim={self.presim}) "
                "needs its first inputs at once: run the network time-major, snn(x_seq) with "
                f"x_seq [T >= {self.presim}, B, ...] (ann2snn.simulate and run do)"
            )
        with torch.no_grad():  # hard thresholds: the dynamics carry no gradient
            return self._step(x, out)

    def _step(self, x: Tensor, out: Tensor | None) -> Tensor:
        if self.v is None:
            self.init_state(x)
        self.begin_step()
        # A buffer of the membrane's dtype: a bf16 result must not be what it is reset by.
        exact_out = out is not None and out.dtype == self.v.dtype
        emitted = out if exact_out else torch.empty_like(self.v)
        tensors = (self.v, x, emitted)
        args = (*tensors, *self.kernel_args())
        # One compiled graph for every rank and layout: the kernel is elementwise, so
        # operands sharing one dense layout can go in as flat views of their storage.
        # Operands in mixed layouts (rare: a strided input) take the eager kernel.
        flat = flat_views(self.v, args) if self.compiled else None
        if flat is not None:
            compiled_kernel(type(self).kernel)(*flat)
        else:
            type(self).kernel(*args)
        self.end_step()
        if self.binary:  # count·quantum → count (whole numbers: rounding removes ulps)
            emitted.div_(self.quantum).round_()
        if out is None:
            return emitted.to(x.dtype)
        if not exact_out:
            out.copy_(emitted)
        return out

    def multi_step(self, x_seq: Tensor) -> Tensor:
        """``[T, B, ...]`` → ``[T, B, ...]``, looping `step` over time."""
        out = torch.empty_like(x_seq)
        if self.presim and self.v is None:
            with torch.no_grad():
                self._start_offset_calibrated(x_seq)
        for t in range(x_seq.shape[0]):
            self.step(x_seq[t], out=out[t])
        return out

    def _start_offset_calibrated(self, x_seq: Tensor) -> None:
        """COS (Hao et al. 2023): pre-simulate `presim` = ρ steps of ``x_seq`` ``[T, B, ...]``
        from v(0), then set v(0) per sample and neuron: one spike too many (fired, and the
        residual v < 0) lowers it by max(θ, lowest firing membrane − 0.999θ), one too few
        (residual v ≥ θ) raises it by max(θ, 1.001θ − highest silent membrane). The real
        steps then run from t = 0 on the same inputs."""
        rho = self.presim
        if x_seq.shape[0] < rho:
            raise RuntimeError(
                f"offset-spike calibration pre-simulates {rho} steps but the first call "
                f"brought {x_seq.shape[0]}; pass at least {rho} steps in the first call "
                "(a smaller batch lets ann2snn.simulate fold more steps per call)"
            )
        theta = self.threshold
        self.init_state(x_seq[0])
        start = self.v.clone()  # v(0): [B, ...]
        emitted = torch.empty_like(self.v)
        lowest = torch.full_like(self.v, float("inf"))  # lowest membrane that fired
        highest = torch.full_like(self.v, -float("inf"))  # highest membrane that did not
        fired_any = torch.zeros_like(self.v, dtype=torch.bool)
        for t in range(rho):
            self.begin_step()
            type(self).kernel(self.v, x_seq[t], emitted, *self.kernel_args())
            self.end_step()
            fired = emitted > 0
            lowest = torch.where(fired, torch.minimum(lowest, self.v + emitted), lowest)
            highest = torch.where(fired, highest, torch.maximum(highest, self.v))
            fired_any |= fired
        too_many = fired_any & (self.v < 0)
        too_few = self.v >= theta
        down = torch.clamp(lowest - 0.999 * theta, min=theta).nan_to_num(posinf=theta.item())
        up = torch.clamp(1.001 * theta - highest, min=theta).nan_to_num(posinf=theta.item())
        shift = torch.where(too_few, up, torch.where(too_many, -down, torch.zeros_like(up)))
        self.v = start + shift

    def ann_forward(self, x: Tensor) -> Tensor:
        """The ANN activation this neuron replaced (set inside a converted network)."""
        if self.binary:
            raise RuntimeError(
                "a binarized network has no ANN pass (its spike values live in the "
                "weights); compare or calibrate the network before binarize"
            )
        if self.ann_activation is None:
            raise RuntimeError(f"{type(self).__name__} has no ANN activation outside a network")
        return self.ann_activation(x)

    def reset(self) -> None:
        """Forget the state; the next step starts from v(0)."""
        self.v = None

    def extra_repr(self) -> str:
        offset = "" if self.v_offset is None else f", v_offset={tuple(self.v_offset.shape)}"
        return (
            f"threshold={float(self.threshold):.4g}, v_init={self.v_init}{offset}, "
            f"step_mode={self.step_mode!r}" + (", compiled=True" if self.compiled else "")
        )


class IFNeuron(SpikingNeuron):
    """Integrate-and-fire, reset by subtraction, emits θ per spike (QCFS §1.2).

    ``v ← v + x; s = [v ≥ θ]; v ← v − s·θ; emit s·θ`` with ``v(0) = θ/2`` by default.
    With θ = λ, v(0) = λ/2, T = L steps and constant input z, the mean output is exactly
    the QCFS activation h(z) (methods.md §6 item 3).
    """

    @staticmethod
    def kernel(v: Tensor, x: Tensor, out: Tensor, theta: Tensor) -> Tensor:
        v.add_(x)  # fp32 membrane, whatever x's dtype
        # Inclusive fire condition v ≥ θ (methods.md §0.8); one spike emits θ.
        torch.ge(v, theta, out=out).mul_(theta)
        v.sub_(out)
        return out


class GroupNeuron(SpikingNeuron):
    """Group neuron (GN): τ IF members with thresholds iθ/τ sharing one membrane.

    ``k = #{i ∈ 1..τ : v ≥ iθ/τ}``, ``v ← v − k·θ/τ`` (lateral inhibition: each member
    is reduced by the group's total firing), emit ``k·θ/τ``. ``v(0) = θ/(2τ)``.
    τ = 1 is exactly `IFNeuron`; with τ = L the network equals the QCFS ANN at T = 1.
    """

    def __init__(
        self,
        threshold: float | Tensor,
        tau: int = 4,
        v_init: float = 0.5,
        step_mode: str = "s",
        compiled: bool = False,
    ):
        super().__init__(threshold, v_init=v_init, step_mode=step_mode, compiled=compiled)
        self.tau = positive_int("tau", tau)

    @classmethod
    def from_activation(cls, act: nn.Module, tau: int | None = None, **kwargs) -> GroupNeuron:
        """θ = λ, v(0) = shift·θ/τ, τ defaults to the activation's levels L."""
        spec = _spec_of(act)
        kwargs.setdefault("v_init", spec.shift)
        # tau=0 is refused by the constructor, not replaced by L.
        return cls(spec.threshold, tau=tau if tau is not None else (spec.levels or 4), **kwargs)

    @property
    def quantum(self) -> Tensor:
        return self.threshold / self.tau

    @property
    def v0(self) -> Tensor:
        # v_init is a fraction of one member step θ/τ (the ½-shift of a τ-level quantizer).
        return self.v_init * self.quantum

    def member_thresholds(self) -> Tensor:
        """``[τ]`` thresholds iθ/τ, i = 1..τ."""
        i = torch.arange(1, self.tau + 1, device=self.threshold.device, dtype=self.threshold.dtype)
        return i * self.quantum

    @staticmethod
    def kernel(v: Tensor, x: Tensor, out: Tensor, quantum: Tensor, tau: int) -> Tensor:
        v.add_(x)
        # Count of members whose threshold iθ/τ is reached, written as a clamped floor
        # (one op instead of τ comparisons): floor(v/(θ/τ)) clipped to [0, τ].
        torch.div(v, quantum, out=out).floor_().clamp_(0, tau).mul_(quantum)
        v.sub_(out)
        return out

    def kernel_args(self) -> tuple:
        return (self.quantum, self.tau)

    def member_spikes(self, count: Tensor) -> Tensor:
        """Binary member spike trains ``[τ, ...]`` (0/1) for a count tensor ``[...]``.

        Member i fires iff ``count ≥ i``, i.e. iff v reached its threshold iθ/τ; this is
        what a chip with τ binary neurons per group would receive. Summing over the
        first axis gives ``count`` back.
        """
        i = torch.arange(1, self.tau + 1, device=count.device, dtype=count.dtype)
        return (count.unsqueeze(0) >= i.view(-1, *([1] * count.dim()))).to(count.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}"


class ConsistentIF(SpikingNeuron):
    """Consistent IF neuron (CIF, CASC §3.2): spikes may be retracted.

    State: membrane v, net spike count N, wake-step counter t, `sleeping` flag. Per step:
    ``v ← v + x``; in wake t ← t + 1; ``s = clip(floor(v/θ), −γ, γ)``, limited so that
    ``0 ≤ N + s ≤ γ·t`` (no retraction of spikes never emitted, never more net spikes
    than wake steps allow); ``N ← N + s``; ``v ← v − s·θ``; emit ``s·θ``.

    After T wake steps and enough input-free sleep steps, N = clip(floor((Z + v0)/θ), 0, T)
    for the total wake input Z, whatever its order. For γ = 1 the limit is the reference
    rule (no positive spike when N ≥ t, no negative one when N ≤ 0); for γ > 1 the cap
    is γ·t so a step can never overshoot it.
    """

    allows_maxpool = True
    folds_batchnorm = True

    def __init__(
        self,
        threshold: float | Tensor = 1.0,
        v_init: float = 0.0,
        gamma: int = 1,
        negative_spikes: bool = True,
        step_mode: str = "s",
        compiled: bool = False,
    ):
        super().__init__(threshold, v_init=v_init, step_mode=step_mode, compiled=compiled)
        self.gamma = positive_int("gamma", gamma)
        self.negative_spikes = bool(negative_spikes)
        self.count: Tensor | None = None  # N, same shape as v
        self._spare: Tensor | None = None  # buffer for the next N
        self.wake_steps = 0  # t (a scalar: every element sees the same wake steps)

    def init_state(self, x: Tensor) -> None:
        super().init_state(x)
        self.count = torch.zeros_like(self.v)
        self._spare = torch.empty_like(self.v)

    def begin_step(self) -> None:
        if not self.sleeping:
            self.wake_steps += 1

    @staticmethod
    def kernel(
        v: Tensor,
        x: Tensor,
        out: Tensor,
        count: Tensor,
        new_count: Tensor,
        theta: Tensor,
        low: int,
        high: int,
        cap: int,
    ) -> Tensor:
        v.add_(x)
        s = torch.div(v, theta, out=out).floor_().clamp_(low, high)  # [B, ...] proposed s
        # Limit to −N ≤ s ≤ γ·t − N, i.e. 0 ≤ N + s ≤ γ·t: clamp the new count N + s with
        # scalar bounds, then s = N_new − N (two passes fewer than clamping s between
        # the tensors −N and γ·t − N). Without negative spikes s ≥ 0 already, so N_new ≥ N.
        torch.add(count, s, out=new_count).clamp_(0, cap)
        torch.sub(new_count, count, out=s).mul_(theta)
        v.sub_(s)
        return out

    def kernel_args(self) -> tuple:
        # N_new goes into a second buffer (no allocation, no copy back); the buffers swap
        # roles after the step (`end_step`).
        low = -self.gamma if self.negative_spikes else 0
        cap = self.gamma * self.wake_steps
        return (self.count, self._spare, self.threshold, low, self.gamma, cap)

    def end_step(self) -> None:
        self.count, self._spare = self._spare, self.count

    def reset(self) -> None:
        super().reset()
        self.count = self._spare = None
        self.wake_steps = 0
        self.sleeping = False

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", gamma={self.gamma}, negative_spikes={self.negative_spikes}"
        )


# ----------------------------------------------------------------------------- registry

_NEURONS: dict[str, type[SpikingNeuron]] = {}


def register_neuron(name: str):
    """Class decorator: make a `SpikingNeuron` subclass available as ``neuron=name`` in
    `ann2snn.convert`, `create_neuron` and the CLI.

    >>> @ann2snn.register_neuron("my_if")
    ... class MyIF(ann2snn.IFNeuron): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_neuron: name must be a non-empty string, got {name!r}")

    def deco(cls: type[SpikingNeuron]) -> type[SpikingNeuron]:
        if not (isinstance(cls, type) and issubclass(cls, SpikingNeuron)):
            raise TypeError(
                f"register_neuron({name!r}): {cls!r} is not a subclass of ann2snn.SpikingNeuron"
            )
        if _NEURONS.get(name, cls) is not cls:
            raise ValueError(
                f"register_neuron: {name!r} is already registered to {_NEURONS[name].__name__}"
            )
        _NEURONS[name] = cls
        return cls

    return deco


register_neuron("if")(IFNeuron)
register_neuron("gn")(GroupNeuron)
register_neuron("cif")(ConsistentIF)


def list_neurons() -> list[str]:
    """Names accepted by ``convert(model, neuron=...)``."""
    return sorted(_NEURONS)


def neuron_class(name: str) -> type[SpikingNeuron]:
    """The neuron class registered under ``name``."""
    try:
        return _NEURONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown neuron {name!r}; choose one of {', '.join(list_neurons())} "
            "(or register your own with ann2snn.register_neuron)"
        ) from None


def create_neuron(
    name: str, act: nn.Module | None = None, threshold=None, **kwargs
) -> SpikingNeuron:
    """Build a neuron by name, from a quantized activation or an explicit threshold."""
    cls = neuron_class(name)
    if act is not None:
        return cls.from_activation(act, **kwargs)
    return cls.from_threshold(threshold, **kwargs)


def neurons(net: nn.Module) -> Iterator[tuple[str, SpikingNeuron]]:
    """(qualified name, neuron) for every spiking neuron in ``net``."""
    for name, m in net.named_modules():
        if isinstance(m, SpikingNeuron):
            yield name, m
