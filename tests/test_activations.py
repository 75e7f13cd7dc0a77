"""QCFS activation: levels, bounds, STE gradients, positive λ (methods.md §1.1, §6 items 1–2)."""

from __future__ import annotations

import math

import pytest
import torch

import ann2snn.nn.activations as A
from ann2snn import QCFS, create_activation, list_activations
from ann2snn.nn.activations import floor_ste

LAMBDAS = [1.0, 2.0]
LEVELS = [1, 2, 4, 8]


def sweep(lam: float) -> torch.Tensor:
    """z from −1.5λ to 2.5λ in steps of 1/64 (exactly representable)."""
    return torch.arange(int(-1.5 * lam * 64), int(2.5 * lam * 64) + 1, dtype=torch.float32) / 64


def closed_form(z: torch.Tensor, lam: float, L: int, shift: float = 0.5) -> torch.Tensor:
    """h(z) = λ/L · clip(floor(z·L/λ + shift), 0, L), in float64."""
    z = z.double()
    return lam / L * torch.clamp(torch.floor(z * L / lam + shift), 0, L)


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("L", LEVELS)
def test_qcfs_matches_closed_form_levels_and_bounds(lam, L):
    act = QCFS(L, lam)
    z = sweep(lam)
    h = act(z).detach()
    assert torch.equal(h.double(), closed_form(z, lam, L))
    # Output levels are exactly {kλ/L : k = 0..L}, and every level is reached.
    k = h * L / lam
    assert torch.equal(k, torch.round(k))
    assert set(k.long().tolist()) == set(range(L + 1))
    # Monotone non-decreasing in z.
    assert bool((h[1:] >= h[:-1]).all())
    # 0 below λ/(2L), λ from λ − λ/(2L) on.
    assert bool((h[z < lam / (2 * L)] == 0).all())
    assert bool((h[z >= lam - lam / (2 * L)] == lam).all())
    # The level boundaries themselves: h jumps exactly at (k − ½)λ/L (inclusive).
    for j in range(1, L + 1):
        edge = torch.tensor((j - 0.5) * lam / L)
        assert float(act(edge).detach()) == j * lam / L
        assert float(act(edge - 1 / 64).detach()) == (j - 1) * lam / L


def test_qcfs_shape_dtype_and_unshifted_variant():
    act = QCFS(4, 2.0, shift=0.0)
    z = sweep(2.0).reshape(-1, 1, 1)
    h = act(z)
    assert h.shape == z.shape and h.dtype == z.dtype
    assert torch.equal(h.double().flatten(), closed_form(z.flatten(), 2.0, 4, shift=0.0))
    # bf16 input stays bf16 (values on the grid are exact in bf16 too).
    zb = torch.tensor([-1.0, 0.25, 0.75, 1.0, 3.0], dtype=torch.bfloat16)
    hb = QCFS(4, 2.0)(zb)
    assert hb.dtype == torch.bfloat16
    assert hb.float().tolist() == [0.0, 0.5, 1.0, 1.0, 2.0]


def test_qcfs_validates_arguments():
    with pytest.raises(ValueError):
        QCFS(0)
    with pytest.raises(ValueError):
        QCFS(2.5)
    with pytest.raises(ValueError):
        QCFS(4, init_threshold=0.0)
    with pytest.raises(ValueError):
        QCFS(4, init_threshold=-1.0)


def test_registry_builds_qcfs():
    assert "qcfs" in list_activations()
    act = create_activation("qcfs", levels=8, init_threshold=2.0)
    assert isinstance(act, QCFS) and act.levels == 8 and float(act.threshold.detach()) == 2.0
    with pytest.raises(ValueError, match="unknown activation"):
        create_activation("nope")


# --------------------------------------------------------------------------- item 2


def test_floor_ste_forward_floor_backward_identity():
    x = torch.tensor([-1.5, -0.25, 0.0, 0.75, 2.5], requires_grad=True)
    y = floor_ste(x)
    assert torch.equal(y.detach(), torch.floor(x.detach()))
    (y * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(5.0))


def grad_points(lam: float) -> torch.Tensor:
    """Points strictly inside and outside the pass band [0, λ] (its two edges have
    measure zero; torch's clamp gradient there is version dependent, see below)."""
    pts = [-2.0, -0.5, -1 / 64, 1 / 64, 0.1, 0.3, 0.5, 0.77, 0.9, 1 - 1 / 64, 1 + 1 / 64, 1.5, 3.0]
    return torch.tensor([p * lam for p in pts], dtype=torch.float32)


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("L", [2, 4])
def test_ste_gradient_wrt_z_is_pass_band_indicator(lam, L):
    act = QCFS(L, lam)
    z = grad_points(lam).requires_grad_(True)
    act(z).sum().backward()
    expected = ((z >= 0) & (z <= lam)).float()  # clamp-first ordering: band [0, λ]
    assert set(z.grad.tolist()) <= {0.0, 1.0}
    assert torch.equal(z.grad, expected)
    # On the band's edges the gradient is still 0 or 1.
    edges = torch.tensor([0.0, lam], requires_grad=True)
    act(edges).sum().backward()
    assert set(edges.grad.tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("L", [2, 4])
def test_ste_gradient_wrt_threshold(lam, L):
    """dh/dλ = q − z/λ inside [0, λ], 1 above, 0 below; λ = exp(log λ) so
    autograd's d/dlogλ is λ·dh/dλ."""
    z = grad_points(lam)
    for zi in z.tolist():
        act = QCFS(L, lam)
        h = act(torch.tensor(zi))
        h.backward()
        q = float(h.detach()) / lam
        if zi < 0:
            expected = 0.0
        elif zi > lam:
            expected = 1.0
        else:
            expected = q - zi / lam
        assert float(act.log_threshold.grad) == pytest.approx(lam * expected, abs=1e-6), zi


def test_ste_gradient_batched_against_closed_form():
    """Same rule over a random batch: the λ-gradient of Σ w·h equals Σ w·dh/dλ."""
    gen = torch.Generator().manual_seed(0)
    lam, L = 2.0, 4
    z = (torch.rand(500, generator=gen) * 4 - 1).requires_grad_(True)  # no exact 0 or λ
    w = torch.randn(500, generator=gen)
    act = QCFS(L, lam)
    h = act(z)
    (w * h).sum().backward()
    zd, q = z.detach(), h.detach() / lam
    inside = (zd >= 0) & (zd <= lam)
    dh_dlam = torch.where(inside, q - zd / lam, (zd > lam).float())
    assert torch.allclose(z.grad, w * inside.float())
    assert float(act.log_threshold.grad) == pytest.approx(
        lam * float((w * dh_dlam).sum()), rel=1e-5
    )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "expanded_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backward_equals_elementwise_backward(layout, dtype):
    """The eager-CPU backward (band kernel + two dot products) gives the gradients of the
    elementwise backward that CUDA and torch.compile use: dh/dz exactly (band edges 0
    and λ included), dh/dλ to rounding."""
    gen = torch.Generator().manual_seed(1)
    lam = torch.tensor(1.5)
    z = (torch.rand(8, 6, 5, 5, generator=gen) * 3 - 1).to(dtype)
    z.view(-1)[:4] = torch.tensor([0.0, 1.5, -0.0, 1.5 + 1e-6])  # edges and just above
    grad = torch.randn(z.shape, generator=gen).to(dtype)
    if layout == "channels_last":
        z = z.contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(memory_format=torch.channels_last)
    elif layout == "expanded_grad":  # what `h.sum().backward()` passes in
        grad = torch.ones((), dtype=dtype).expand(z.shape)
    out = A._QCFSFunction.forward(_Ctx(), z, lam, 4, 0.5)
    assert A._fast_cpu_path(z)
    gz_fast, gl_fast = A._qcfs_backward_cpu(grad, z, lam, out, True)
    gz_ref, gl_ref = A._qcfs_backward(grad, z, lam, out, True)
    assert torch.equal(gz_fast, gz_ref)
    assert gz_fast[0, 0, 0, :2].tolist() == grad[0, 0, 0, :2].tolist()  # z = 0 and z = λ pass
    assert gz_fast[0, 0, 0, 3].item() == 0.0  # just above λ: blocked
    assert float(gl_fast) == pytest.approx(float(gl_ref), rel=1e-5, abs=1e-5)


def test_clipquant_band_includes_both_edges_in_every_float_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        eps = torch.finfo(dtype).eps
        z = torch.tensor([-eps, -0.0, 0.0, 0.5, 1.0, 1.0 + eps], dtype=dtype)
        grad = torch.full_like(z, 0.5)
        out = A._band(grad, z, 1.0 + eps)
        assert out.tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.0], dtype


class _Ctx:
    """Stand-in for autograd's ctx when calling a Function's forward directly."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


# --------------------------------------------------------------------------- λ > 0


def test_set_threshold_sets_and_rejects_non_positive():
    act = QCFS(4, 8.0)
    act.set_threshold(2.0)
    assert float(act.threshold.detach()) == 2.0
    assert float(act.log_threshold.detach()) == pytest.approx(math.log(2.0))
    act.set_threshold(torch.tensor(0.5))
    assert float(act.threshold.detach()) == 0.5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            act.set_threshold(bad)
    assert float(act.threshold.detach()) == 0.5  # a rejected value leaves λ alone


@pytest.mark.parametrize("step", [50.0, 1e3, 1e6])
def test_huge_gradient_step_keeps_threshold_positive(step):
    """An SGD step that would drive a raw λ far below zero leaves λ > 0 (log-space),
    and the activation stays finite (no 0/0)."""
    act = QCFS(4, 1.0)
    opt = torch.optim.SGD(act.parameters(), lr=1.0)
    z = torch.linspace(-1, 2, 61)
    act(z).sum().backward()
    act.log_threshold.grad.fill_(step)  # a huge push towards λ → 0
    opt.step()
    lam = act.threshold
    assert bool(lam > 0)
    assert bool(torch.isfinite(act(z)).all())
    assert bool((act(z) >= 0).all())
