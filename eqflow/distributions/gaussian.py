"""Isotropic Gaussian on the centre-of-mass-free subspace, with its normalizer."""
from __future__ import annotations

import math

import torch

from ..geometry import assert_com_free, check_positions, com_free_dim, remove_mean

__all__ = ["CoMFreeGaussian", "com_free_gaussian_log_prob"]


def com_free_gaussian_log_prob(x: torch.Tensor, scale: torch.Tensor | float, n_atoms: int,
                               dim: int) -> torch.Tensor:
    """``log N_V(x; σ) = -|x|²/(2σ²) - (N-1)·dim/2 · log(2πσ²)`` for CoM-free ``x``.

    Parameters
    ----------
    x : ``[batch, n_atoms, dim]`` (assumed CoM-free; not checked here)
    scale : σ, a float or a tensor broadcastable to ``[batch]``
    """
    d = com_free_dim(n_atoms, dim)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    sq = x.pow(2).sum(dim=(-2, -1))
    return -0.5 * sq / scale**2 - 0.5 * d * torch.log(2 * math.pi * scale**2)


class CoMFreeGaussian(torch.nn.Module):
    """``N(0, σ² P)`` with ``P`` the projector onto ``V = {x : Σ_i x_i = 0}``.

    The density is with respect to the Lebesgue measure on ``V`` (dimension ``(N-1)·dim``) and is
    normalized there, unlike a mean-free Gaussian that drops the normalizer: likelihoods of different
    models and of different ``σ`` are comparable.

    Parameters
    ----------
    n_atoms, dim : shape of one configuration
    scale : σ
    learn_scale : make ``log σ`` a trainable parameter
    """

    def __init__(self, n_atoms: int, dim: int, scale: float = 1.0, learn_scale: bool = False):
        super().__init__()
        if n_atoms < 2:
            raise ValueError(f"n_atoms must be >= 2 for a CoM-free density, got {n_atoms}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.n_atoms, self.dim = int(n_atoms), int(dim)
        log_scale = torch.tensor(math.log(scale), dtype=torch.get_default_dtype())
        if learn_scale:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    @property
    def event_dim(self) -> int:
        """``(N-1)·dim``, the dimension of the subspace the density lives on."""
        return com_free_dim(self.n_atoms, self.dim)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[n, n_atoms, dim]`` CoM-free samples (reparameterized in ``σ``)."""
        eps = torch.randn(n, self.n_atoms, self.dim, generator=generator,
                          dtype=self.log_scale.dtype, device=self.log_scale.device)
        # Projecting an isotropic ambient Gaussian onto V gives exactly N(0, σ² P).
        return remove_mean(eps) * self.scale

    def log_prob_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density ``[batch]`` of ``x`` assumed CoM-free (no check, no host sync)."""
        return com_free_gaussian_log_prob(x, self.scale, self.n_atoms, self.dim)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density ``[batch]`` on V of CoM-free ``x`` ``[batch, n_atoms, dim]``."""
        check_positions(x, self.n_atoms, self.dim)
        assert_com_free(x)
        return self.log_prob_unchecked(x)
