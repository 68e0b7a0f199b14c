"""Divergence of a vector field: exact (one backward pass per coordinate) or Hutchinson."""
from __future__ import annotations

import torch

__all__ = ["exact_divergence", "hutchinson_divergence", "sample_noise", "NOISE_TYPES"]

NOISE_TYPES = ("rademacher", "gaussian")


def exact_divergence(v: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                     frobenius: bool = False):
    """``tr(∂v/∂x)`` for ``v, x`` of shape ``[B, N, dim]`` (``v`` computed from ``x``): ``[B]``.

    One vector-Jacobian product per coordinate (``N·dim`` backward passes), batched over ``B``.
    For a translation-invariant, mean-free field this ambient trace equals the divergence on the
    CoM-free subspace. With ``frobenius=True`` also returns ``‖∂v/∂x‖²_F`` ``[B]`` from the same rows.
    """
    vf = v.flatten(1)
    d = vf.shape[1]
    div = torch.zeros(vf.shape[0], dtype=v.dtype, device=v.device)
    fro = torch.zeros_like(div)
    for i in range(d):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
        g = g.flatten(1)
        div = div + g[:, i]
        if frobenius:
            fro = fro + g.pow(2).sum(-1)
    return (div, fro) if frobenius else div


def hutchinson_divergence(v: torch.Tensor, x: torch.Tensor, noise: torch.Tensor,
                          create_graph: bool = False, frobenius: bool = False):
    """Unbiased estimate ``εᵀ (∂v/∂x) ε`` of the divergence with ``E[εεᵀ] = I``: ``[B]``.

    One vector-Jacobian product. ``noise`` has the shape of ``x``; keep it fixed during one ODE solve
    so the estimated log-density is the exact log-density of one fixed (random) estimator. With
    ``frobenius=True`` also returns ``|εᵀ ∂v/∂x|²`` ``[B]``, an unbiased estimate of ``‖∂v/∂x‖²_F``
    from the same product.
    """
    (g,) = torch.autograd.grad(v, x, noise, create_graph=create_graph)
    div = (g * noise).flatten(1).sum(-1)
    return (div, g.pow(2).flatten(1).sum(-1)) if frobenius else div


def sample_noise(shape, kind: str = "rademacher", dtype=None, device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise with zero mean and identity covariance: Rademacher (±1) or standard Gaussian."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    raise ValueError(f"unknown Hutchinson noise {kind!r}; choose one of {NOISE_TYPES}")
