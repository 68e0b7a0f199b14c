"""Energy regularization for training: tame huge energies, keep non-finite ones visible.

Overlapping atoms give energies of 1e10 kT and more; their gradients would swamp a reverse-KL
step. Training therefore uses ``regularize_energy`` (DESIGN.md: linear below a cut, logarithmic
above). Non-finite energies are *not* repaired: NaN stays NaN and ``+inf`` stays ``+inf`` so that the
trainer can drop those samples with :func:`finite_mask` and count them. Evaluation reports raw
energies.
"""
from __future__ import annotations

import torch

__all__ = ["regularize_energy", "finite_mask", "masked_energy", "clipped_force_energy"]


def regularize_energy(u: torch.Tensor, cut: float = 1e3, max_value: float = 1e9) -> torch.Tensor:
    """Identity below ``cut``, ``cut + log(1 + u - cut)`` above, clipped at ``max_value``.

    Parameters
    ----------
    u : ``[...]`` reduced energies (any shape).
    cut : where the logarithmic branch starts (kT). The map is continuous with slope 1 there.
    max_value : finite upper clip on the result (only reachable for absurd ``cut``); ``+inf`` is
        not clipped.

    Returns
    -------
    Same shape as ``u``. Monotone, differentiable (gradient ``1 / (1 + u - cut)`` above the cut).
    ``NaN -> NaN``, ``+inf -> +inf``, ``-inf -> -inf`` (kept so that non-finite samples are dropped
    and counted, see :func:`finite_mask`).
    """
    # Clamp the argument of the log branch so the unused branch of torch.where never yields NaN
    # gradients (where() back-propagates into both branches).
    excess = torch.clamp(u - cut, min=0.0)
    high = cut + torch.log1p(excess)
    if max_value is not None:
        high = torch.clamp(high, max=max_value)
    out = torch.where(u > cut, high, u)
    # +inf would be log1p(inf) = inf anyway unless clipped: keep it infinite explicitly.
    return torch.where(torch.isposinf(u), u, out)


def finite_mask(u: torch.Tensor) -> torch.Tensor:
    """Boolean mask of finite entries of ``u`` (``[...]`` -> same shape)."""
    return torch.isfinite(u)


class _MaskedEnergy(torch.autograd.Function):
    """``u(x)`` whose gradient rows are exactly zero where the energy or its force is not finite
    (and, with ``force_clip``, whose per-atom gradient norms are capped)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, target, force_clip: float | None = None) -> torch.Tensor:
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            u = target.energy(xd)
            (g,) = torch.autograd.grad(u.sum(), xd)
        u = u.detach()
        ok = torch.isfinite(u) & torch.isfinite(g).flatten(1).all(1)
        if force_clip is not None:
            norm = g.norm(dim=-1, keepdim=True)  # [B, N, 1] per-atom force magnitude
            g = g * torch.clamp(force_clip / norm, max=1.0).nan_to_num(1.0)
        ctx.save_for_backward(torch.where(ok[:, None, None], g, torch.zeros_like(g)), ok)
        # A finite energy with a NaN force (coincident particles) is just as unusable: mark it +inf.
        return torch.where(ok, u, torch.full_like(u, float("inf")))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        g, ok = ctx.saved_tensors
        # Dropped rows get an exactly zero gradient whatever flows back to them (0 · inf, NaN);
        # kept rows pass their incoming gradient through unchanged, NaN included (never hidden).
        grad_out = torch.where(ok, grad_out, torch.zeros_like(grad_out))
        return grad_out[:, None, None] * g, None, None


def masked_energy(target, x: torch.Tensor, force_clip: float | None = None) -> torch.Tensor:
    """Reduced energy ``[B]`` of ``x`` ``[B, N, dim]`` for training losses: ``+inf`` (and an exactly
    zero gradient) for every row whose energy or force is not finite.

    With plain autograd, a row dropped from the loss still back-propagates ``0 · inf = NaN`` from an
    overlapping configuration's force (LJ walls, coincident DW4 particles, OpenMM failures), which
    poisons the whole batch's gradient. Here the energy and its gradient are computed together in the
    forward pass (one energy and one force evaluation, as before) and non-finite rows are cut off,
    so a batch's gradient equals the gradient of its finite rows alone. No double backward.

    ``force_clip`` (kT per unit length): the gradient of each atom is scaled down to at most this norm
    (the energy value is unchanged), see :func:`clipped_force_energy`.
    """
    if force_clip is not None and not force_clip > 0:
        raise ValueError(f"force_clip must be positive, got {force_clip}")
    return _MaskedEnergy.apply(x, target, force_clip)


def clipped_force_energy(u_raw: torch.Tensor, cut: float = 1e3) -> torch.Tensor:
    """Training energy for :func:`masked_energy` ``(..., force_clip=F)``: the value of
    :func:`regularize_energy` (a readable loss) with the gradient of ``u_raw`` itself, i.e. the force
    with each atom's norm capped at ``F``.

    Why not the logarithmic damping's gradient ``∇u / (1 + u - cut)``: it decays like ``1/u``, so a
    model that scales a system by ``s`` meets a restoring gradient ``~2/s`` from a harmonic term while
    its entropy gains ``dim·N/s``: reverse KL with a log-damped energy is unbounded below under
    expansion (an LJ55 pair-field run grew its cluster 2e7-fold, docs/results.md). A capped force keeps
    a restoring gradient of order ``F`` per atom at any size and still tames overlapping atoms.
    Non-finite entries stay non-finite (and are dropped by the loss).
    """
    finite = torch.isfinite(u_raw)
    u_safe = torch.where(finite, u_raw, torch.zeros_like(u_raw))
    return regularize_energy(u_raw, cut=cut).detach() + (u_safe - u_safe.detach())
