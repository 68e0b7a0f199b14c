"""Geometry on the centre-of-mass-free subspace.

Positions are ``[batch, n_atoms, dim]``. Every density in eqflow lives on
``V = {x : sum_i x_i = 0}`` (dimension ``(n_atoms - 1) * dim``), so the helpers here remove or check the
centre of mass, draw symmetry operations for tests and augmentation, align structures and read the
handedness of chiral centres.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "check_positions",
    "remove_mean",
    "is_com_free",
    "assert_com_free",
    "random_rotations",
    "random_orthogonal",
    "kabsch_rotation",
    "kabsch_align",
    "reflect",
    "chirality_sign",
    "com_free_dim",
]


def check_positions(x: torch.Tensor, n_atoms: int | None = None, dim: int | None = None,
                    name: str = "x") -> torch.Tensor:
    """Raise a ``ValueError`` naming the problem unless ``x`` is ``[batch, n_atoms, dim]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [batch, n_atoms, dim], got shape {tuple(x.shape)}")
    if n_atoms is not None and x.shape[1] != n_atoms:
        raise ValueError(f"{name} has {x.shape[1]} atoms, expected {n_atoms} (shape {tuple(x.shape)})")
    if dim is not None and x.shape[2] != dim:
        raise ValueError(f"{name} has spatial dim {x.shape[2]}, expected {dim} (shape {tuple(x.shape)})")
    return x


def com_free_dim(n_atoms: int, dim: int) -> int:
    """Dimension ``(n_atoms - 1) * dim`` of the CoM-free subspace."""
    return (n_atoms - 1) * dim


def remove_mean(x: torch.Tensor) -> torch.Tensor:
    """Subtract the (unweighted) centre of mass: ``[..., n_atoms, dim] -> same``."""
    return x - x.mean(dim=-2, keepdim=True)


def is_com_free(x: torch.Tensor, atol: float | None = None) -> bool:
    """True where every configuration's centre lies at the origin within ``atol``.

    The default tolerance scales with the dtype's precision and the size of ``x``.
    """
    if atol is None:
        eps = torch.finfo(x.dtype).eps if x.is_floating_point() else 1e-7
        atol = 100 * eps * max(1.0, float(x.detach().abs().max()) if x.numel() else 1.0)
    return bool((x.detach().mean(dim=-2).abs() <= atol).all())


def assert_com_free(x: torch.Tensor, name: str = "x", atol: float | None = None) -> None:
    """Raise a ``ValueError`` if ``x`` has non-finite entries or is not centred (see :func:`is_com_free`)."""
    finite = torch.isfinite(x).flatten(1).all(1) if x.dim() > 1 else torch.isfinite(x).all()[None]
    if not bool(finite.all()):
        raise ValueError(f"{name} has non-finite positions (NaN or inf) in {int((~finite).sum())} of "
                         f"{finite.numel()} configurations; densities are defined for finite positions only")
    if not is_com_free(x, atol):
        worst = float(x.detach().mean(dim=-2).norm(dim=-1).max())
        raise ValueError(
            f"{name} is not CoM-free (largest |centre| = {worst:.3g}); densities are defined on the "
            "subspace sum_i x_i = 0: apply eqflow.geometry.remove_mean first"
        )


def random_rotations(n: int, dim: int = 3, dtype=torch.float64, device=None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Haar-uniform rotations ``[n, dim, dim]`` (det +1), from the QR of a Gaussian matrix."""
    q = random_orthogonal(n, dim, dtype=dtype, device=device, generator=generator)
    # Flip one axis where det = -1: a measure-preserving bijection O(d)- -> SO(d).
    det = torch.linalg.det(q)
    q[..., :, 0] = q[..., :, 0] * det.sign().unsqueeze(-1)
    return q


def random_orthogonal(n: int, dim: int = 3, dtype=torch.float64, device=None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Haar-uniform orthogonal maps ``[n, dim, dim]`` (rotations and reflections, det ±1)."""
    a = torch.randn(n, dim, dim, dtype=dtype, device=device, generator=generator)
    q, r = torch.linalg.qr(a)
    # Sign correction makes the QR factor Haar-distributed (Mezzadri 2007).
    d = torch.diagonal(r, dim1=-2, dim2=-1).sign()
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d.unsqueeze(-2)


def kabsch_rotation(x: torch.Tensor, ref: torch.Tensor, allow_reflection: bool = False) -> torch.Tensor:
    """The orthogonal map ``R`` ``[batch, dim, dim]`` minimizing ``Σ_i |R (x_i - x̄) - (ref_i - r̄)|²``.

    Parameters
    ----------
    x : ``[batch, n_atoms, dim]``
    ref : ``[n_atoms, dim]`` or ``[batch, n_atoms, dim]``
    allow_reflection : also allow improper maps (det -1); by default ``R`` is a proper rotation, the
        optimum over SO(dim) (chirality is physical)
    """
    ref = ref.expand_as(x) if ref.dim() == 2 else ref
    h = remove_mean(x).transpose(-1, -2) @ remove_mean(ref)  # [B, d, d]
    u, _, vt = torch.linalg.svd(h)
    if allow_reflection:
        return vt.transpose(-1, -2) @ u.transpose(-1, -2)
    # Flip the least significant singular direction where the unconstrained optimum is a reflection.
    # (det >= 0 counts as proper, so a degenerate, planar h still gives a rotation.)
    det = torch.linalg.det(vt.transpose(-1, -2) @ u.transpose(-1, -2))
    diag = torch.ones(x.shape[0], x.shape[-1], dtype=x.dtype, device=x.device)
    diag[:, -1] = torch.where(det < 0, -1.0, 1.0).to(x.dtype)
    return vt.transpose(-1, -2) @ torch.diag_embed(diag) @ u.transpose(-1, -2)


def kabsch_align(x: torch.Tensor, ref: torch.Tensor, allow_reflection: bool = False) -> torch.Tensor:
    """Optimally rotate (and translate) ``x`` onto ``ref`` (rotation from :func:`kabsch_rotation`).

    Parameters
    ----------
    x : ``[batch, n_atoms, dim]``
    ref : ``[n_atoms, dim]`` or ``[batch, n_atoms, dim]``
    allow_reflection : also allow improper rotations.

    Returns
    -------
    ``[batch, n_atoms, dim]``: ``x`` centred, rotated, then moved to ``ref``'s centre.
    """
    ref = ref.expand_as(x) if ref.dim() == 2 else ref
    rot = kabsch_rotation(x, ref, allow_reflection)
    return remove_mean(x) @ rot.transpose(-1, -2) + ref.mean(dim=-2, keepdim=True)


def reflect(x: torch.Tensor) -> torch.Tensor:
    """Point reflection ``x -> -x`` (turns each enantiomer into the other; keeps CoM at 0)."""
    return -x


def chirality_sign(x: torch.Tensor, center: int, neighbors: tuple[int, int, int]) -> torch.Tensor:
    """Handedness of a chiral centre: ``sign(det[a - c, b - c, d - c])`` per configuration.

    Parameters
    ----------
    x : ``[batch, n_atoms, 3]``
    center : index of the chiral atom (alanine: CA = 8)
    neighbors : three bonded atoms in a fixed order (alanine: N = 6, C = 14, CB = 10)

    Returns
    -------
    ``[batch]`` of ±1 (0 for degenerate, planar centres). A reflection flips every sign.
    """
    check_positions(x, dim=3)
    c = x[:, center]
    m = torch.stack([x[:, j] - c for j in neighbors], dim=-1)
    return torch.linalg.det(m).sign()


def log_volume_factor_relative(n_atoms: int, dim: int) -> float:
    """``(dim/2) log N``: ``log p_V(x) = log p_y(y) + this`` for ``y_i = x_i - x_0`` (DESIGN.md)."""
    return 0.5 * dim * math.log(n_atoms)
