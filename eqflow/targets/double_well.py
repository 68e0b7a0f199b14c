"""The double-well particle system DW4 (Köhler et al. 2020)."""
from __future__ import annotations

import torch

from ._pairs import pair_squared_distances
from .energy import Energy

__all__ = ["DoubleWell"]


class DoubleWell(Energy):
    """Pairwise double-well potential on ``n_particles`` points in ``dim`` dimensions.

    ``u(x) = (1 / tau) * sum_{i<j} [a (d_ij - d0) + b (d_ij - d0)^2 + c (d_ij - d0)^4]``
    over unique pairs. With the defaults (DW4) each pair distance has two wells, near
    ``d0 -+ sqrt(-b / 2c)`` ~ 1.9 and 6.1; the Boltzmann distribution at ``tau = 1`` therefore has
    short and long pairs and a bimodal distance histogram. Invariant under E(dim) and permutations.

    Parameters
    ----------
    n_particles, dim : shape of one configuration (DW4: 4, 2).
    a, b, c, d0 : potential coefficients.
    tau : temperature; energies are divided by it.
    """

    def __init__(self, n_particles: int = 4, dim: int = 2, a: float = 0.0, b: float = -4.0,
                 c: float = 0.9, d0: float = 4.0, tau: float = 1.0):
        super().__init__(n_particles, dim)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.a, self.b, self.c, self.d0, self.tau = float(a), float(b), float(c), float(d0), float(tau)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        d = pair_squared_distances(x).sqrt()
        s = d - self.d0
        s2 = s * s
        e = self.a * s + self.b * s2 + self.c * s2 * s2
        return e.sum(-1) / self.tau

    def extra_repr(self) -> str:
        return (f"n_particles={self.n_atoms}, dim={self.dim}, a={self.a}, b={self.b}, c={self.c}, "
                f"d0={self.d0}, tau={self.tau}")
