"""Smooth radial features of edge lengths: a Bessel basis times a polynomial cutoff envelope."""
from __future__ import annotations

import math

import torch

__all__ = ["BesselBasis", "PolynomialCutoff", "RadialEmbedding"]


class BesselBasis(torch.nn.Module):
    """``√(2/r_max) · sin(nπ r / r_max) / r`` for ``n = 1..n_basis``: ``[...] -> [..., n_basis]``.

    The radial eigenfunctions of a particle in a sphere of radius ``r_max`` (DimeNet, NequIP): a
    complete, smooth basis on ``(0, r_max]``. Frequencies are fixed (not learned) so that a model's
    radial resolution is set by its config, not by training.
    """

    def __init__(self, r_max: float, n_basis: int = 8):
        super().__init__()
        self.r_max, self.n_basis = float(r_max), int(n_basis)
        self.register_buffer("freqs", math.pi / self.r_max * torch.arange(
            1, self.n_basis + 1, dtype=torch.get_default_dtype()))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r[..., None]
        return math.sqrt(2.0 / self.r_max) * torch.sin(self.freqs.to(r.dtype) * r) / r


class PolynomialCutoff(torch.nn.Module):
    """Envelope ``u(r / r_max)`` falling from 1 at 0 to exactly 0 at ``r_max`` (zero beyond it).

    ``u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)`` (Klicpera et al., DimeNet):
    its first ``p - 1`` derivatives vanish at ``d = 1``, so messages, forces and the divergence of a
    field are continuous when an atom crosses the cutoff, and an edge beyond ``r_max`` contributes
    exactly nothing: dropping it from the edge list changes no value and no gradient.
    """

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max, self.p = float(r_max), int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p, d = self.p, r / self.r_max
        u = (1.0 - (p + 1) * (p + 2) / 2 * d ** p + p * (p + 2) * d ** (p + 1)
             - p * (p + 1) / 2 * d ** (p + 2))
        return u * (d < 1.0)


class RadialEmbedding(torch.nn.Module):
    """Edge lengths ``[E]`` -> smooth radial features ``[E, n_basis]`` (Bessel basis × envelope)."""

    def __init__(self, r_max: float, n_basis: int = 8, p: int = 6):
        super().__init__()
        self.basis = BesselBasis(r_max, n_basis)
        self.cutoff = PolynomialCutoff(r_max, p)
        self.r_max, self.n_basis = float(r_max), int(n_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.cutoff(r)[..., None]
