"""Lennard-Jones clusters in a harmonic trap (LJ13, LJ55; Köhler et al. 2020)."""
from __future__ import annotations

import torch

from ._pairs import pair_squared_distances
from .energy import Energy

__all__ = ["LennardJones", "lj13", "lj55"]


class LennardJones(Energy):
    """Lennard-Jones cluster with an optional harmonic oscillator on the centre of mass.

    ``u(x) = eps * sum_{i<j} [(rm/d_ij)^12 - 2 (rm/d_ij)^6]
    + oscillator_scale * 1/2 * sum_i |x_i - x_com|^2``

    over unique pairs (no double counting). The pair minimum is ``-eps`` at ``d = rm``. The
    oscillator keeps the cluster from evaporating; it is translation invariant, so the density is
    normalizable on the CoM-free subspace.

    Overlapping particles (``d = 0``) give ``+inf``, never NaN: the pair term is evaluated as
    ``r6 * (r6 - 2)`` with ``r6 = (rm^2 / d^2)^3``, which is ``inf * inf`` there instead of ``inf - inf``.

    Parameters
    ----------
    n_particles : number of particles.
    dim : spatial dimension (3).
    eps, rm : well depth and position of the pair minimum.
    oscillator : include the harmonic term.
    oscillator_scale : its spring constant.
    """

    def __init__(self, n_particles: int, dim: int = 3, eps: float = 1.0, rm: float = 1.0,
                 oscillator: bool = True, oscillator_scale: float = 1.0):
        super().__init__(n_particles, dim)
        self.eps, self.rm = float(eps), float(rm)
        self.oscillator, self.oscillator_scale = bool(oscillator), float(oscillator_scale)

    def lj_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Pair (Lennard-Jones) part only, ``[batch]``."""
        d2 = pair_squared_distances(x)
        r6 = (self.rm * self.rm / d2) ** 3
        return self.eps * (r6 * (r6 - 2.0)).sum(-1)

    def oscillator_energy(self, x: torch.Tensor) -> torch.Tensor:
        """Harmonic part ``1/2 * scale * sum_i |x_i - x_com|^2``, ``[batch]``."""
        xc = x - x.mean(dim=1, keepdim=True)
        return 0.5 * self.oscillator_scale * (xc * xc).sum(dim=(1, 2))

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        u = self.lj_energy(x)
        if self.oscillator:
            u = u + self.oscillator_energy(x)
        return u

    def extra_repr(self) -> str:
        return (f"n_particles={self.n_atoms}, dim={self.dim}, eps={self.eps}, rm={self.rm}, "
                f"oscillator={self.oscillator}, oscillator_scale={self.oscillator_scale}")


def lj13(**kwargs) -> LennardJones:
    """LJ13: 13 particles in 3D, eps = rm = 1, with the oscillator."""
    return LennardJones(13, **kwargs)


def lj55(**kwargs) -> LennardJones:
    """LJ55: 55 particles in 3D, eps = rm = 1, with the oscillator."""
    return LennardJones(55, **kwargs)
