"""Edge lists of a batch of point clouds, flattened to one graph of ``batch · n_atoms`` nodes."""
from __future__ import annotations

import torch

__all__ = ["dense_edges", "radius_edges", "EDGE_MODES"]

EDGE_MODES = ("dense", "radius")


def dense_edges(batch: int, n_atoms: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs ``i != j`` within each structure: ``src, dst`` of shape ``[batch · N · (N-1)]``.

    Node ``i`` of structure ``b`` has the flat index ``b · N + i``. Edges are grouped by structure,
    then by receiver ``dst``, then by sender.
    """
    idx = torch.arange(n_atoms, device=device)
    dst, src = torch.meshgrid(idx, idx, indexing="ij")
    keep = src != dst
    offsets = (torch.arange(batch, device=device) * n_atoms)[:, None]
    return (src[keep][None] + offsets).reshape(-1), (dst[keep][None] + offsets).reshape(-1)


def radius_edges(x: torch.Tensor, r_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered pairs ``i != j`` closer than ``r_max`` within each structure of ``x`` ``[B, N, 3]``.

    A radius graph from all pair distances (``O(N²)`` distances, but messages only on kept edges;
    for the few hundred atoms of a flow's systems this beats a cell list). The selection is not
    differentiable and needs none: with a cutoff envelope an edge at ``r >= r_max`` carries zero
    message and zero gradient, so the result equals the dense graph's.
    """
    b, n, _ = x.shape
    with torch.no_grad():
        d2 = (x[:, :, None, :] - x[:, None, :, :]).pow(2).sum(-1)  # [B, N(dst), N(src)]
        keep = d2 < r_max ** 2
        keep &= ~torch.eye(n, dtype=torch.bool, device=x.device)
        bi, dst, src = keep.nonzero(as_tuple=True)
    return bi * n + src, bi * n + dst
