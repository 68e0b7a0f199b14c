"""Energy regularization for training: tame huge energies, keep non-finite ones visible.

Overlapping atoms give energies of 1e10 kT and more; their gradients would swamp a reverse-KL
step. Training therefore uses ``regularize_energy`` (DESIGN.md: linear below a cut, logarithmic
above). Non-finite energies are *not* repaired: NaN stays NaN and ``+inf`` stays ``+inf`` so that the
trainer can drop those samples with :func:`finite_mask` and count them. Evaluation reports raw
energies.
"""
from __future__ import annotations

import torch

__all__ = ["regularize_energy", "finite_mask"]


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
