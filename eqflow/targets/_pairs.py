"""Unique-pair geometry shared by the particle potentials."""
from __future__ import annotations

import torch

__all__ = ["pair_squared_distances"]


def pair_squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Squared distances over the unique pairs ``i < j``.

    Parameters
    ----------
    x : ``[batch, n, dim]``

    Returns
    -------
    ``[batch, n (n - 1) / 2]`` in ``torch.triu_indices`` order.

    Differences are taken explicitly (not via ``|a|^2 + |b|^2 - 2 a.b``) so that coincident particles
    give exactly 0 rather than a small negative number from cancellation.
    """
    n = x.shape[1]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    diff = x[:, i] - x[:, j]
    return (diff * diff).sum(-1)
