"""One measure: a density over internal coordinates as a density on the CoM-free subspace V.

Derivation (3D, N atoms, Z-matrix root r0; :mod:`eqflow.internal.zmatrix` for the volume element).

1. Z-matrix. ``d^{3N}x = d³x_{r0} · dμ(R) · J(ic) d(ic)`` with ``log J = Σ_bonds 2 log b +
   Σ_angles log sin a`` and μ the Haar measure on SO(3) in the chart (direction of r0->r1 on S²,
   azimuth ψ of r2 about it): ``dμ = sin θ dθ dφ dψ``, total mass ``4π · 2π = 8π²``.
   With relative coordinates ``y_i = x_i - x_{r0}`` (``d^{3N}x = d³x_{r0} d^{3(N-1)}y``):
   ``d^{3(N-1)}y = dμ(R) · J(ic) d(ic)``.
2. Orientation. The model draws R uniformly: density ``1/(8π²)`` with respect to μ. So the density of
   y is ``p_y(y) = p_IC(ic) / (8π² J(ic))``.
3. CoM-free subspace. ``x = x_V + 1 ⊗ c`` with c the centre; the unit vectors along translations are
   ``1 ⊗ e_d / √N``, so ``d^{3N}x = dH_V · N^{3/2} d³c``; for fixed ``x_V``, ``d³x_{r0} = d³c``, so
   ``dH_V = N^{-3/2} d^{3(N-1)}y``, i.e. ``log p_V(x) = log p_y(y) + (3/2) log N`` (DESIGN.md,
   "Relative coordinates").

Together::

    log p_V(x) = log p_IC(ic(x)) - log J(ic(x)) - log 8π² + (3/2) log N

The map V -> (R, ic) thus has ``log|det| = (3/2) log N - log J`` with respect to μ
(:func:`log_det_v_to_internal`); tests check it against autograd Jacobians in the (θ, φ, ψ) chart.
"""
from __future__ import annotations

import math

import torch

from ..geometry import log_volume_factor_relative

__all__ = ["LOG_SO3_VOLUME", "log_det_v_to_internal", "internal_to_v_log_density"]

LOG_SO3_VOLUME = math.log(8 * math.pi ** 2)  # Haar mass of SO(3) in the (S², azimuth) chart


def log_det_v_to_internal(log_volume: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """``log|det ∂(R, ic)/∂x|`` of V -> (SO(3), IC), Haar measure of mass 8π² on SO(3).

    Parameters
    ----------
    log_volume : ``[B]`` ``log J(ic)`` from :meth:`~eqflow.internal.zmatrix.ZMatrix.log_volume`
    n_atoms : N
    """
    return log_volume_factor_relative(n_atoms, 3) - log_volume


def internal_to_v_log_density(log_p_ic: torch.Tensor, log_volume: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """Density on V of ``x``, from the IC model's density of ``ic(x)`` and a uniform orientation.

    ``log p_V(x) = log p_IC(ic) - log J(ic) - log 8π² + (3/2) log N`` (derivation in the module
    docstring). The only place where eqflow converts between the two measures.

    Parameters
    ----------
    log_p_ic : ``[B]`` log-density of the internal coordinates (Lebesgue in bonds, angles, torsions)
    log_volume : ``[B]`` ``log J(ic)`` (:meth:`~eqflow.internal.zmatrix.ZMatrix.log_volume`)
    n_atoms : N

    Returns
    -------
    ``[B]`` log-density with respect to the Lebesgue measure on the CoM-free subspace V.
    """
    return log_p_ic + log_det_v_to_internal(log_volume, n_atoms) - LOG_SO3_VOLUME
