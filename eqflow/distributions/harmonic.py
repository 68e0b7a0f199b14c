"""Harmonic (bond-graph) Gaussian on the centre-of-mass-free subspace, with its normalizer.

Bonded atoms start close to each other: the base is ``N_V(0, s²·Λ⁻¹)`` with the atom-space precision
``Λ = k·L + ε·I`` (``L`` the Laplacian of the bond graph) acting on each spatial coordinate. On V::

    log p(x) = -½ Σ_d x_dᵀ Λ x_d / s² + (dim/2)·Σ_i log λ_i - (N-1)·dim·log s - (N-1)·dim/2 · log 2π

where ``λ_i`` are the N-1 eigenvalues of ``Λ`` on the complement of the all-ones vector (its
pseudo-determinant on V) and ``x_d`` ``[N]`` is coordinate ``d`` of every atom. ``L·1 = 0``, so ``Λ``
maps V to itself and this is a proper Gaussian on V whenever ``Λ`` is positive definite there (a
connected graph, or ``ε > 0``). The same ``Λ`` acts on every spatial coordinate, so the density is
rotation (and reflection) invariant.
"""
from __future__ import annotations

import math

import torch

from ..geometry import assert_com_free, check_positions, com_free_dim, remove_mean

__all__ = ["HarmonicBase", "graph_laplacian"]


def graph_laplacian(n_atoms: int, bonds=None, adjacency=None) -> torch.Tensor:
    """Laplacian ``L = D - A`` ``[n_atoms, n_atoms]`` (float64) of a bond graph.

    Parameters
    ----------
    bonds : ``[n_bonds, 2]`` atom index pairs (duplicates count once; self-bonds are rejected)
    adjacency : ``[n_atoms, n_atoms]`` symmetric non-negative weights (alternative to ``bonds``)
    """
    if (bonds is None) == (adjacency is None):
        raise ValueError("give exactly one of bonds and adjacency")
    if bonds is not None:
        b = torch.as_tensor(bonds, dtype=torch.long).reshape(-1, 2)
        if b.numel() and (b.min() < 0 or b.max() >= n_atoms):
            raise ValueError(f"bond indices must lie in [0, {n_atoms}), got {b.tolist()}")
        if (b[:, 0] == b[:, 1]).any():
            raise ValueError("a bond joins an atom to itself")
        a = torch.zeros(n_atoms, n_atoms, dtype=torch.float64)
        a[b[:, 0], b[:, 1]] = 1.0
        a[b[:, 1], b[:, 0]] = 1.0
    else:
        a = torch.as_tensor(adjacency, dtype=torch.float64).clone()
        if a.shape != (n_atoms, n_atoms):
            raise ValueError(f"adjacency must have shape [{n_atoms}, {n_atoms}], got {tuple(a.shape)}")
        if not torch.allclose(a, a.T) or (a < 0).any():
            raise ValueError("adjacency must be symmetric and non-negative")
        a.fill_diagonal_(0.0)
    return torch.diag(a.sum(1)) - a


class HarmonicBase(torch.nn.Module):
    """``N_V(0, s²·Λ⁻¹)``, ``Λ = k·L + ε·I``: a CoM-free Gaussian whose covariance follows the bonds.

    Same interface as :class:`~eqflow.distributions.CoMFreeGaussian` (``sample``, ``log_prob``,
    ``scale``, ``event_dim``, ``n_atoms``, ``dim``), so it can be the base of a
    :class:`~eqflow.flows.ContinuousFlow` or a component of a :class:`~eqflow.distributions.MixtureBase`.
    With ``k = 0`` it is ``CoMFreeGaussian`` with ``σ = s / √ε``. For two bonded atoms (ε = 0) the bond
    vector has variance ``s²/k`` per coordinate, so ``k ≈ 1 / (bond length)²`` keeps bonds at about
    their length (alanine in nm: ``k ~ 50-100``).

    Parameters
    ----------
    n_atoms, dim : shape of one configuration
    bonds : ``[n_bonds, 2]`` atom index pairs, or
    adjacency : ``[n_atoms, n_atoms]`` symmetric bond weights
    k : spring constant (precision per unit of Laplacian)
    eps : isotropic precision ``ε``; needed (> 0) when the graph is not connected
    scale : ``s``, a global scale of the covariance
    learn_scale : make ``log s`` a trainable parameter

    Raises
    ------
    ValueError
        If ``Λ`` is not positive definite on V (a disconnected graph with ``eps = 0``).
    """

    def __init__(self, n_atoms: int, dim: int = 3, bonds=None, adjacency=None, k: float = 1.0,
                 eps: float = 0.0, scale: float = 1.0, learn_scale: bool = False):
        super().__init__()
        if n_atoms < 2:
            raise ValueError(f"n_atoms must be >= 2 for a CoM-free density, got {n_atoms}")
        if k < 0 or eps < 0:
            raise ValueError(f"k and eps must be non-negative, got k={k}, eps={eps}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.n_atoms, self.dim, self.k, self.eps = int(n_atoms), int(dim), float(k), float(eps)
        lap = graph_laplacian(self.n_atoms, bonds, adjacency)
        precision = self.k * lap + self.eps * torch.eye(self.n_atoms, dtype=torch.float64)
        # Orthonormal basis Q [N, N-1] of the complement of 1; Λ commutes with the projector onto it
        # (L·1 = 0), so the eigenpairs of QᵀΛQ are exactly Λ's eigenpairs on V.
        p = torch.eye(self.n_atoms, dtype=torch.float64) - 1.0 / self.n_atoms
        q = torch.linalg.qr(p[:, : self.n_atoms - 1]).Q
        evals, evecs = torch.linalg.eigh(q.T @ precision @ q)
        tol = 1e-10 * max(1.0, float(precision.abs().max()))
        if evals.min() <= tol:
            raise ValueError(f"Λ = k·L + eps·I is singular on the CoM-free subspace (smallest eigenvalue "
                             f"{float(evals.min()):.3g}): the bond graph is not connected; set eps > 0")
        dtype = torch.get_default_dtype()
        self.register_buffer("precision", precision.to(dtype))          # Λ [N, N]
        self.register_buffer("eigvals", evals.to(dtype))                # λ [N-1]
        self.register_buffer("eigvecs", (q @ evecs).to(dtype))          # [N, N-1], orthonormal, ⊥ 1
        self.register_buffer("log_pdet", evals.log().sum().to(dtype))   # Σ log λ_i
        log_scale = torch.tensor(math.log(scale), dtype=dtype)
        if learn_scale:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @classmethod
    def from_topology(cls, topology, dim: int = 3, **kwargs) -> "HarmonicBase":
        """Harmonic base on the bonds of an ``mdtraj.Topology`` (e.g. ``MolecularSystem.topology``).

        ``kwargs`` go to the constructor (``k``, ``eps``, ``scale``, ``learn_scale``).
        """
        bonds = [(a.index, b.index) for a, b in topology.bonds]
        if not bonds:
            raise ValueError("the topology has no bonds (a PDB without CONECT records or standard "
                             "residues?); pass bonds explicitly")
        return cls(topology.n_atoms, dim, bonds=bonds, **kwargs)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    @property
    def event_dim(self) -> int:
        """``(N-1)·dim``, the dimension of the subspace the density lives on."""
        return com_free_dim(self.n_atoms, self.dim)

    def atom_covariance(self) -> torch.Tensor:
        """``s²·Λ⁺`` ``[N, N]``: the covariance of one spatial coordinate over the atoms (on V)."""
        return self.scale**2 * (self.eigvecs / self.eigvals) @ self.eigvecs.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[n, n_atoms, dim]`` CoM-free samples (reparameterized in ``s``)."""
        z = torch.randn(n, self.n_atoms - 1, self.dim, generator=generator,
                        dtype=self.eigvals.dtype, device=self.eigvals.device)
        # x_d = s·U λ^(-1/2) z_d has covariance s²·U diag(1/λ) Uᵀ = s²Λ⁺; U ⊥ 1 keeps it on V, the
        # projection only removes rounding.
        x = torch.einsum("ij,bjd->bid", self.eigvecs * self.eigvals.rsqrt(), z)
        return remove_mean(x) * self.scale

    def log_prob_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density ``[batch]`` of ``x`` ``[batch, n_atoms, dim]`` assumed CoM-free (no host sync)."""
        d = self.event_dim
        quad = torch.einsum("bid,ij,bjd->b", x, self.precision.to(x.dtype), x)
        return (-0.5 * quad / self.scale**2 + 0.5 * self.dim * self.log_pdet
                - d * self.log_scale - 0.5 * d * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density ``[batch]`` on V of CoM-free ``x`` ``[batch, n_atoms, dim]``."""
        check_positions(x, self.n_atoms, self.dim)
        assert_com_free(x)
        return self.log_prob_unchecked(x)

    def extra_repr(self) -> str:
        return f"n_atoms={self.n_atoms}, dim={self.dim}, k={self.k}, eps={self.eps}"
