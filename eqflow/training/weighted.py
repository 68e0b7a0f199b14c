"""Importance-weighted losses on buffer samples: maximum likelihood and flow matching.

The weights are self-normalized within the batch, ``w_i = exp(log_w_i) / Σ_j exp(log_w_j)``, and
treated as constants (no gradient flows into them): they only say how much each sample counts.
"""
from __future__ import annotations

import torch

from .flow_matching import flow_matching_loss

__all__ = ["self_normalized", "weighted_maximum_likelihood_loss", "weighted_flow_matching_loss"]


def self_normalized(log_w: torch.Tensor) -> torch.Tensor:
    """``softmax(log_w)`` ``[n]``, detached; ``-inf`` entries get weight 0."""
    log_w = log_w.detach()
    if not torch.isfinite(log_w).any():
        raise ValueError("every log weight is -inf or NaN: nothing to weigh")
    return torch.softmax(torch.nan_to_num(log_w, nan=-float("inf")), 0)


def weighted_maximum_likelihood_loss(flow, x: torch.Tensor, log_w: torch.Tensor):
    """``-Σ_i w_i log q(x_i)`` with self-normalized weights ``w`` from ``log_w`` ``[B]``.

    Rows whose ``log q`` is not finite are dropped and the remaining weights renormalized.

    Returns
    -------
    loss : scalar
    stats : dict with ``nll`` (the loss), ``ess`` (Kish ESS fraction of the weights) and ``n_dropped``
    """
    log_q = flow.log_prob(x)
    ok = torch.isfinite(log_q) & torch.isfinite(log_w)
    w = self_normalized(torch.where(ok, log_w, torch.full_like(log_w, -float("inf"))))
    loss = -(w[ok] * log_q[ok]).sum()
    ess = float(w.sum() ** 2 / (w.shape[0] * w.pow(2).sum()))
    return loss, dict(nll=float(loss.detach()), ess=ess, n_dropped=int((~ok).sum()))


def weighted_flow_matching_loss(model, x0: torch.Tensor, x1: torch.Tensor, log_w: torch.Tensor, **kwargs):
    """:func:`~eqflow.training.flow_matching.flow_matching_loss` with per-pair weights
    ``softmax(log_w)``, ``log_w`` ``[B]`` the importance log weights of the data samples ``x1``.

    ``kwargs`` go to ``flow_matching_loss`` (``t``, ``components``, ``sigma_min``, ``h``, ``generator``).
    """
    return flow_matching_loss(model, x0, x1, weights=self_normalized(log_w), **kwargs)
