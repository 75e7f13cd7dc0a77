"""Quantized ANN activations that convert to spiking neurons.

Every quantized activation declares what it converts to through one small protocol,
``spike_spec() -> SpikeSpec`` (threshold θ, shift, levels), so any of them can be run on
any neuron where the math allows it, and a user's own activation plugs in the same way:

* ``QCFS``      h(z) = λ/L · clip(floor(z·L/λ + ½), 0, L)            (Bu et al., 2022)
* ``NoisyQCFS`` QCFS minus σ·ε during training only                  (Huang et al., 2024)
* ``ClipQuant`` floor(clip(z, 0, 1)·Q)/Q, fixed range, no shift      (Li et al., 2024)

Activations are resolved by name through one registry (`create_activation`), so the
model zoo takes ``act="qcfs"`` without forking model code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._util import finite_number, positive_int
from ._compile import flat_views
from .state import state_tensor

__all__ = [
    "QCFS",
    "NoisyQCFS",
    "ClipQuant",
    "SpikeSpec",
    "floor_ste",
    "create_activation",
    "register_activation",
    "list_activations",
    "is_quantized_activation",
    "clamp_thresholds_",
    "THRESHOLD_PARAMS",
    "RAW_THRESHOLD_FLOOR",
    "THRESHOLD_PARAM_NAMES",
]

# Smallest normal fp32 number: a floor for λ that needs no dtype lookup (so the
# property stays traceable by torch.fx, where dtypes are proxies).
_TINY = 1.1754943508222875e-38

#: How a QCFS threshold λ is stored for training: ``log`` (log λ) or ``raw`` (λ itself).
THRESHOLD_PARAMS = ("log", "raw")
#: Smallest λ a ``raw`` threshold may take (after each step and in every forward).
RAW_THRESHOLD_FLOOR = 1e-3
#: Parameter names of the stored thresholds (for optimizer groups).
THRESHOLD_PARAM_NAMES = ("log_threshold", "raw_threshold")


@dataclass(frozen=True)
class SpikeSpec:
    """What a quantized activation converts to (the conversion protocol).

    An activation module is *quantized* (converts without calibration data) when it has a
    method ``spike_spec() -> SpikeSpec``. A neuron replacing it gets θ = ``threshold`` and
    v(0) = ``shift``·θ (per member quantum for group neurons); ``levels`` (L, or None
    when the activation has no fixed number of levels) is the group neurons' default τ.
    An activation that can also take a threshold from data (`ann2snn.prepare`'s
    calibration) has a ``set_threshold(value)`` method.
    """

    threshold: Tensor  # 0-dim λ, detached: fp32 (fp64 for a fp64 λ)
    shift: float = 0.5
    levels: int | None = None

    def __post_init__(self) -> None:
        try:
            theta = state_tensor(self.threshold)  # fp32, or fp64 for a fp64 λ
        except (TypeError, RuntimeError, ValueError):
            raise TypeError(
                f"SpikeSpec.threshold must be a positive finite scalar, got {self.threshold!r}"
            ) from None
        if theta.numel() != 1 or not bool(theta > 0) or not bool(theta.isfinite()):
            raise ValueError(f"SpikeSpec.threshold must be a positive finite scalar, got {theta}")
        object.__setattr__(self, "threshold", theta.reshape(()))
        if not math.isfinite(self.shift):
            raise ValueError(f"SpikeSpec.shift must be finite, got {self.shift!r}")
        if self.levels is not None and (int(self.levels) != self.levels or self.levels < 1):
            raise ValueError(f"SpikeSpec.levels must be a positive integer, got {self.levels!r}")


def floor_ste(x: Tensor) -> Tensor:
    """floor(x) in the forward pass, identity in the backward pass (straight-through)."""
    return x + (torch.floor(x) - x).detach()


def _fast_cpu_path(z: Tensor) -> bool:
    """Eager fp32/fp64 on the CPU: there λ can be read as a Python number (no device sync,
    no graph break) and each pass over a tensor is paid in full, so the backward uses a
    few fused ATen kernels. Everywhere else (CUDA, torch.compile) the elementwise form is
    used, which the compiler fuses into one kernel."""
    return (
        z.device.type == "cpu"
        and z.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
    )


def _band(grad: Tensor, z: Tensor, above: float) -> Tensor:
    """``grad`` where 0 ≤ z < ``above``, else 0, in one pass. Pass as ``above`` the next
    representable number after h in z's dtype to keep grad on the closed band [0, h].

    ``hardtanh_backward`` keeps grad on an open interval (min, max). Its lower bound here
    is −(smallest normal) rather than the nearest denormal, so z = 0 stays inside even
    when denormals are flushed to zero.
    """
    # Written in z's memory layout: the layer before (BatchNorm, conv) gets its gradient
    # in the layout of its own output, even where ``grad`` arrives in another (e.g. from a
    # flatten); mixed layouts send the CPU's BatchNorm backward to a slow path.
    return torch.ops.aten.hardtanh_backward.grad_input(
        grad, z, -torch.finfo(z.dtype).tiny, above, grad_input=torch.empty_like(z)
    )


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ a·b in one pass (a BLAS dot) when a and b share one dense layout, else a·b summed."""
    # Same strides over dense storage: element k of both 1-D views is the same index.
    # (flat_views leaves 0-dim tensors as they are, and dot needs 1-D.)
    flat = flat_views(a, (a, b)) if a.dim() else None
    return torch.dot(*flat) if flat is not None else (a * b).sum()


class _QCFSFunction(torch.autograd.Function):
    """h(z) = λ/L·floor(clip(z·L/λ, 0, L) + shift) in one function: five passes over z
    in the forward (instead of about ten through autograd) and an explicit STE backward.

    Backward (clamp-first ordering): dh/dz = 1 on [0, λ], else 0; dh/dλ = h/λ − z/λ on
    [0, λ], 1 above, 0 below.
    """

    @staticmethod
    def forward(ctx, z: Tensor, lam: Tensor, levels: int, shift: float) -> Tensor:
        lam_z = lam.to(z.dtype)
        # Integer level k = floor(clip(z·L/λ, 0, L) + shift) ∈ {0..L}, then k·λ/L.
        out = torch.mul(z, levels / lam_z).clamp_(0, levels).add_(shift).floor_()
        out.mul_(lam_z / levels)
        ctx.save_for_backward(z, lam, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, lam, out = ctx.saved_tensors
        want_lam = ctx.needs_input_grad[1]
        if _fast_cpu_path(z) and grad.dtype == z.dtype:
            grad_z, grad_lam = _qcfs_backward_cpu(grad, z, lam, out, want_lam)
        else:
            grad_z, grad_lam = _qcfs_backward(grad, z, lam, out, want_lam)
        return (grad_z if ctx.needs_input_grad[0] else None), grad_lam, None, None


def _qcfs_backward(grad: Tensor, z: Tensor, lam: Tensor, out: Tensor, want_lam: bool):
    """QCFS gradients as elementwise tensor ops (fused by torch.compile; any device/dtype)."""
    lam_z = lam.to(z.dtype)
    # c = clip(z, 0, λ): z is inside [0, λ] iff c == z, above iff c < z. Masks are
    # written as floats (a bool→float cast costs a pass of its own on CPU).
    c = torch.clamp(z, min=torch.zeros_like(lam_z), max=lam_z)
    inside = torch.eq(c, z, out=torch.empty_like(z))
    grad_z = grad * inside
    grad_lam = None
    if want_lam:
        # dh/dλ = (h − z)/λ inside, 1 above, 0 below; grad_z is 0 outside, so
        # Σ grad·dh/dλ = Σ grad_z·(h − z)/λ + Σ grad·[z > λ], summed in fp32.
        above = torch.lt(c, z, out=inside)  # reuses the mask's buffer
        grad_lam = (grad_z * (out - z)).float().sum() / lam.float()
        grad_lam = (grad_lam + (grad * above).float().sum()).to(lam.dtype)
    return grad_z, grad_lam


def _qcfs_backward_cpu(grad: Tensor, z: Tensor, lam: Tensor, out: Tensor, want_lam: bool):
    """The same gradients in three passes (eager CPU, fp32/fp64): one band kernel for
    dh/dz and two dot products for dh/dλ, instead of about nine elementwise passes.

    Σ grad·dh/dλ = (Σ grad·h − Σ grad_z·z)/λ: inside the band that is grad·(h − z)/λ;
    above it h = λ and grad_z = 0, giving grad·1; below it h = 0 and grad_z = 0.
    """
    lam_z = lam.detach().to(z.dtype)
    grad_z = _band(grad, z, float(torch.nextafter(lam_z, lam_z.new_tensor(math.inf))))
    grad_lam = None
    if want_lam:
        grad_lam = ((_dot(grad, out) - _dot(grad_z, z)) / lam_z).to(lam.dtype)
    return grad_z, grad_lam


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation with a trainable threshold λ.

    ``h(z) = λ/L · clip(floor(z·L/λ + shift), 0, L)`` with ``shift = 1/2``.

    Clamp-first ordering (methods.md §1.1, the successor repository's and NQ's):
    ``u = clamp(z/λ, 0, 1)``, ``q = floor_ste(u·L + shift)/L``, output ``q·λ``. So the
    gradient passes z only on [0, λ] and dh/dλ is ``q − z/λ`` inside, 1 above, 0 below.

    ``threshold_param`` chooses what the optimizer trains:

    * ``"log"`` (default): the parameter is ``log_threshold`` and ``threshold =
      exp(log_threshold)``; no step can push λ through zero. The gradient reaching λ is
      the same, but an SGD step moves λ about λ² times as far as on a raw λ.
    * ``"raw"``: the parameter is ``raw_threshold`` = λ itself, as in the papers' code.
      A large step could cross zero, so λ is kept ≥ `RAW_THRESHOLD_FLOOR`: the forward
      reads ``max(raw, floor)`` (with the gradient passed straight through, so a λ pushed
      below the floor can come back) and `clamp_thresholds_` projects the parameter back
      after every optimizer step (`ann2snn.train` registers it on its optimizer).

    Both give identical forward values for the same λ.
    """

    #: Every quantized activation in this module carries these three facts.
    levels: int
    shift: float

    def __init__(
        self,
        levels: int = 4,
        init_threshold: float = 8.0,
        shift: float = 0.5,
        threshold_param: str = "log",
    ):
        super().__init__()
        self.levels = positive_int("levels", levels)
        init_threshold = finite_number("init_threshold", init_threshold)
        if not init_threshold > 0:
            raise ValueError(f"init_threshold must be > 0, got {init_threshold!r}")
        self.shift = finite_number("shift", shift)
        if threshold_param not in THRESHOLD_PARAMS:
            raise ValueError(
                f"threshold_param must be one of {', '.join(THRESHOLD_PARAMS)}, "
                f"got {threshold_param!r}"
            )
        self.threshold_param = threshold_param
        if threshold_param == "log":
            self.log_threshold = nn.Parameter(torch.tensor(math.log(init_threshold)))
        else:
            self.raw_threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """λ, a positive scalar tensor (differentiable)."""
        if self.threshold_param == "raw":
            raw = self.raw_threshold
            # max(raw, floor) forward, identity backward (straight-through): between an
            # optimizer step and its projection λ is never ≤ 0, and no gradient is lost.
            # (raw − raw.detach() is exactly 0, so the value is max(raw, floor) to the bit.)
            return raw.detach().clamp_min(RAW_THRESHOLD_FLOOR) + (raw - raw.detach())
        # exp underflows to exactly 0 for log λ below about −104 (fp32), which would turn
        # h(z) into 0/0 = NaN; the smallest normal number keeps λ > 0.
        return self.log_threshold.exp().clamp_min(_TINY)

    @torch.no_grad()
    def set_threshold(self, value: float | Tensor) -> None:
        """Set λ (must be > 0)."""
        param = self.raw_threshold if self.threshold_param == "raw" else self.log_threshold
        value = torch.as_tensor(value, dtype=param.dtype)
        if not bool(value > 0):
            raise ValueError(f"threshold must be > 0, got {float(value)}")
        param.copy_(value if self.threshold_param == "raw" else value.log())

    def quantize(self, z: Tensor) -> Tensor:
        """The noise-free QCFS map h(z); shape in = shape out."""
        return _QCFSFunction.apply(z, self.threshold, self.levels, self.shift)

    def forward(self, z: Tensor) -> Tensor:
        return self.quantize(z)

    def spike_spec(self) -> SpikeSpec:
        """θ = λ, v(0) = shift·λ, τ defaults to L."""
        return SpikeSpec(self.threshold.detach(), self.shift, self.levels)

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, threshold={float(self.threshold.detach()):.4g}, "
            f"shift={self.shift}, threshold_param={self.threshold_param}"
        )


class NoisyQCFS(QCFS):
    """QCFS with zero-mean Gaussian noise that models the SNN's residual error (NQ).

    Training mode: ``a = h(z) − σ·ε``, ε ~ N(0, 1) per element; σ is a per-layer scalar
    buffer re-estimated each epoch by `ann2snn.calibrate_noise`. Evaluation mode: plain
    QCFS, no noise (the reference code keeps noise on while measuring ANN accuracy; we
    don't, so the ANN accuracy we report is the deterministic network that converts).
    With σ = 0 the output is QCFS bit for bit. The noise has no gradient term: it has no
    parameters and is added after quantization.
    """

    def __init__(
        self,
        levels: int = 4,
        init_threshold: float = 8.0,
        shift: float = 0.5,
        sigma: float = 0.0,
        threshold_param: str = "log",
    ):
        super().__init__(levels, init_threshold, shift, threshold_param)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    def forward(self, z: Tensor) -> Tensor:
        q = self.quantize(z)
        if not self.training:
            return q
        if _fast_cpu_path(q):
            # On the CPU σ is read for free: no draw at all where σ = 0 (every layer in the
            # first epoch), and σ·ε drawn in one pass by normal_(0, σ).
            sigma = float(self.sigma)
            if sigma == 0.0:
                return q
            # Noise in q's layout (so the subtraction is one vectorised pass), drawn
            # through a flat view of its dense buffer: torch's CPU sampler is only fast
            # on contiguous memory (~6× slower into channels_last strides), and i.i.d.
            # noise does not care which element gets which draw.
            noise = torch.empty_like(q)
            noise.as_strided((noise.numel(),), (1,)).normal_(0.0, sigma)
            return q - noise
        # Elsewhere always drawn: testing σ > 0 would cost a GPU→CPU sync per layer per
        # step (and a graph break under torch.compile); with σ = 0 the result is
        # q − 0·ε = q exactly. Contiguous noise: see above.
        noise = torch.randn_like(q, memory_format=torch.contiguous_format)
        return q - self.sigma.to(q.dtype) * noise

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sigma={float(self.sigma):.4g}"


class _ClipFloorSTE(torch.autograd.Function):
    """floor(clip(z, 0, 1)·Q)/Q with a straight-through floor whose incoming gradient
    is clipped to [−1, 1] (CASC's rule), passed only where 0 ≤ z ≤ 1."""

    @staticmethod
    def forward(ctx, z: Tensor, levels: int) -> Tensor:
        ctx.save_for_backward(z)
        # One allocation, then in place: the same values as floor(clip(z)·Q)/Q.
        return torch.clamp(z, 0.0, 1.0).mul_(levels).floor_().div_(levels)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (z,) = ctx.saved_tensors
        # Two passes: clip the gradient, then keep it on [0, 1] (1 + eps is the next
        # number after 1 in z's dtype).
        return _band(grad.clamp(-1.0, 1.0), z, 1.0 + torch.finfo(z.dtype).eps), None


class ClipQuant(nn.Module):
    """CASC's clip-floor activation ``floor(clip(z, 0, 1)·Q)/Q``: no shift, range [0, 1].

    Output levels {0, 1/Q, …, 1}; 0 for z < 1/Q, 1 for z ≥ 1. The preceding BatchNorm
    learns the scale, so the threshold is fixed at 1.
    """

    shift: float = 0.0

    def __init__(self, levels: int = 8):
        super().__init__()
        self.levels = positive_int("levels", levels)
        self.register_buffer("_threshold", torch.tensor(1.0), persistent=False)

    @property
    def threshold(self) -> Tensor:
        return self._threshold

    def forward(self, z: Tensor) -> Tensor:
        return _ClipFloorSTE.apply(z, self.levels)

    def spike_spec(self) -> SpikeSpec:
        """θ = 1 (the range is fixed; the BatchNorm before learns the scale), no shift."""
        return SpikeSpec(self._threshold, 0.0, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def is_quantized_activation(module: nn.Module) -> bool:
    """True for activation modules that declare a `SpikeSpec` (``spike_spec()``): QCFS,
    NQ, ClipQuant and any registered user activation that implements the protocol."""
    return isinstance(module, nn.Module) and callable(getattr(module, "spike_spec", None))


@torch.no_grad()
def clamp_thresholds_(model: nn.Module) -> int:
    """Project every ``raw`` QCFS threshold of ``model`` back to ≥ `RAW_THRESHOLD_FLOOR`
    (in place; call after an optimizer step). Returns how many were clamped."""
    clamped = 0
    for m in model.modules():
        if isinstance(m, QCFS) and m.threshold_param == "raw":
            if bool(m.raw_threshold < RAW_THRESHOLD_FLOOR):
                m.raw_threshold.clamp_(min=RAW_THRESHOLD_FLOOR)
                clamped += 1
    return clamped


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_activation(name: str):
    """Decorator: register a factory ``fn(levels: int, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


@register_activation("relu")
def _relu(levels: int = 4, **kwargs) -> nn.Module:
    return nn.ReLU()


@register_activation("qcfs")
def _qcfs(levels: int = 4, **kwargs) -> nn.Module:
    return QCFS(levels, **kwargs)


@register_activation("nq")
def _nq(levels: int = 4, **kwargs) -> nn.Module:
    return NoisyQCFS(levels, **kwargs)


@register_activation("clipq")
def _clipq(levels: int = 8, **kwargs) -> nn.Module:
    return ClipQuant(levels)


def list_activations() -> list[str]:
    """Names accepted by `create_activation` (and ``act=`` of `create_model`)."""
    return sorted(_REGISTRY)


def create_activation(name: str, levels: int = 4, **kwargs) -> nn.Module:
    """Build an activation by registry name, e.g. ``create_activation("qcfs", levels=4)``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(list_activations())}"
        ) from None
    return factory(levels=levels, **kwargs)
