"""Metropolis-adjusted Langevin (MALA) on the CoM-free subspace, one chain per configuration.

Used to refine a flow's own samples with the energy alone (``buffer.mcmc_steps``): a few hundred
local moves fix what the flow has not learned yet (bond lengths, angles, overlapping atoms) long
before reverse KL's gradient does, and maximum likelihood on the refined states is a mass-covering
training signal whose fixed point is the target (Gabrié, Rotskoff & Vanden-Eijnden, "Adaptive Monte
Carlo augmented with normalizing flows", PNAS 2022, use such chains with local MALA moves).

Why not a library sampler: the moves must stay on the CoM-free subspace ``V`` that eqflow's densities
live on, batch over chains with one OpenMM call per step, and take the per-atom drift cap below; the
few lines are simpler than adapting a general sampler (e.g. Pyro's HMC/NUTS work on one chain's
unconstrained space).

The proposal is ``y = x + d(x) + sqrt(2 ε) ξ_V`` with ``ξ_V`` the projection of a standard normal onto
``V`` (an isotropic Gaussian on ``V``) and the drift ``d(x) = ε F(x)``, ``F = -∇u``, each atom's drift
capped at ``max_drift`` in norm and projected onto ``V`` (a truncated MALA, Roberts & Tweedie 1996: a
capped drift is still a valid proposal as long as the reverse move uses the same function). The
Metropolis-Hastings ratio uses the Gaussian proposal densities on ``V`` in both directions, so each
step leaves ``exp(-u)`` on ``V`` invariant. Each chain adapts its own step size between steps
(``log ε += rate · (accepted - target)``), which makes the whole run an adaptive chain: right for
refinement, not for unbiased estimates (use :func:`eqflow.targets.metropolis` for references).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..geometry import remove_mean
from .energy import Energy
from .regularize import masked_energy

__all__ = ["MALAResult", "mala", "energy_and_force"]


@dataclass
class MALAResult:
    """Output of :func:`mala`.

    Attributes
    ----------
    x : ``[B, N, dim]`` final states (CoM-free).
    u : ``[B]`` their reduced energies.
    acceptance : ``[B]`` fraction of accepted moves per chain.
    step_size : ``[B]`` final step size ``ε`` per chain (length²).
    """

    x: torch.Tensor
    u: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor


def energy_and_force(energy: Energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u [B], F [B, N, dim])`` with ``F = -∇u`` (OpenMM targets: one call), no graph kept; rows
    whose energy or force is not finite get ``u = +inf`` and ``F = 0`` (:func:`masked_energy`)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        u = masked_energy(energy, xr)
        (g,) = torch.autograd.grad(u.sum(), xr)
    return u.detach(), -g.detach()


def _drift(step: torch.Tensor, force: torch.Tensor, max_drift: float | None) -> torch.Tensor:
    """``ε F`` with each atom's norm capped at ``max_drift``, projected onto ``V``."""
    d = step[:, None, None] * force
    if max_drift is not None:
        norm = d.norm(dim=-1, keepdim=True)
        d = d * torch.clamp(max_drift / norm.clamp_min(1e-300), max=1.0)
    return remove_mean(d)


def mala(energy: Energy, x: torch.Tensor, n_steps: int, step_size, max_drift: float | None = None,
         target_acceptance: float = 0.57, adapt_rate: float = 0.1,
         generator: torch.Generator | None = None) -> MALAResult:
    """Run ``n_steps`` MALA moves from every configuration of ``x``, no autograd graph kept.

    Parameters
    ----------
    energy : reduced potential ``u`` ``[B, N, dim] -> [B]``
    x : ``[B, N, dim]`` starting states (CoM removed here); a start with a non-finite energy accepts
        the first proposal with a finite one
    n_steps : moves per chain (0 returns the starts with their energies)
    step_size : initial ``ε`` (length², e.g. ~1e-5 nm² for a molecule's stiffest bonds): a float or a
        ``[B]`` tensor
    max_drift : cap on each atom's drift ``ε |F_i|`` (length; None: no cap). Overlapping atoms have
        forces of 1e10 kT/nm and more; a capped drift lets such a chain move at all
    target_acceptance, adapt_rate : per-chain step-size adaptation (``adapt_rate = 0``: fixed ``ε``,
        a plain MALA chain)
    generator : random numbers (proposals and acceptance)

    Returns
    -------
    :class:`MALAResult`
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if max_drift is not None and not max_drift > 0:
        raise ValueError(f"max_drift must be positive or None, got {max_drift}")
    x = remove_mean(x.detach())
    b = x.shape[0]
    step = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(b).clone()
    if not (step > 0).all():
        raise ValueError(f"step_size must be positive, got {step_size}")
    u, force = energy_and_force(energy, x)
    n_acc = torch.zeros(b, dtype=x.dtype, device=x.device)
    for _ in range(int(n_steps)):
        drift = _drift(step, force, max_drift)
        noise = remove_mean(torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator))
        y = x + drift + torch.sqrt(2.0 * step)[:, None, None] * noise
        u_y, force_y = energy_and_force(energy, y)
        forward = y - x - drift
        backward = x - y - _drift(step, force_y, max_drift)
        log_ratio = (u - u_y + (forward.pow(2).sum((1, 2)) - backward.pow(2).sum((1, 2))) / (4.0 * step))
        # A non-finite proposal is never taken; a finite one from a non-finite state always is.
        log_ratio = torch.where(torch.isfinite(u_y), torch.where(torch.isfinite(u), log_ratio,
                                                                 torch.full_like(u, math.inf)),
                                torch.full_like(u, -math.inf))
        log_r = torch.rand(b, dtype=x.dtype, device=x.device, generator=generator).log()
        accept = log_r < torch.nan_to_num(log_ratio, nan=-math.inf)
        x = torch.where(accept[:, None, None], y, x)
        u = torch.where(accept, u_y, u)
        force = torch.where(accept[:, None, None], force_y, force)
        n_acc += accept.to(x.dtype)
        if adapt_rate > 0:
            step = step * torch.exp(adapt_rate * (accept.to(x.dtype) - target_acceptance))
    acceptance = n_acc / max(int(n_steps), 1)
    return MALAResult(x=x, u=u, acceptance=acceptance, step_size=step)
