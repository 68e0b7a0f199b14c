"""Sample-quality metrics shared by every model (DESIGN.md, "Metrics").

All functions accept torch tensors or numpy arrays and return Python floats or numpy arrays, so
baselines that are not written in torch are measured by the same code.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import wasserstein_distance

__all__ = [
    "log_weights",
    "ess",
    "self_normalized_weights",
    "energy_w1",
    "interatomic_distances",
    "distance_histogram_distance",
    "nll",
]


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def log_weights(u, log_q, return_count: bool = False):
    """Importance log weights ``log w = -u(x) - log q(x)``.

    Parameters
    ----------
    u : ``[n]`` reduced target energies of the samples.
    log_q : ``[n]`` model log densities of the same samples.
    return_count : also return how many weights were non-finite.

    Returns
    -------
    ``[n]`` numpy array; non-finite entries (NaN energy, overlap ``u = inf``, ``log_q = ±inf``) become
    ``-inf`` (weight 0) so that they count against the ESS instead of poisoning it. With
    ``return_count``: ``(log_w, n_nonfinite)``.
    """
    u, log_q = _np(u), _np(log_q)
    if u.shape != log_q.shape:
        raise ValueError(f"u {u.shape} and log_q {log_q.shape} must have the same shape")
    lw = -u - log_q
    bad = ~np.isfinite(lw)
    lw = np.where(bad, -np.inf, lw)
    n_bad = int(bad.sum())
    if n_bad:
        warnings.warn(f"{n_bad} of {lw.size} log weights are non-finite; set to -inf", stacklevel=2)
    return (lw, n_bad) if return_count else lw


def self_normalized_weights(log_w) -> np.ndarray:
    """``w_i / sum_j w_j`` from log weights ``[n]``, computed in log space (max-shifted).

    All weights zero (every ``log_w = -inf``) gives all zeros.
    """
    lw = _np(log_w)
    lse = logsumexp(lw) if lw.size else -np.inf
    if not np.isfinite(lse):
        return np.zeros_like(lw)
    return np.exp(lw - lse)


def ess(log_w) -> float:
    """Kish effective sample size as a fraction of ``n``: ``(sum w)^2 / (n * sum w^2)``.

    Parameters
    ----------
    log_w : ``[n]`` log weights (``-inf`` entries count as zero weights).

    Returns
    -------
    Float in ``[1/n, 1]``; 1 for equal weights, ``~1/n`` for one dominant weight, 0 if every weight
    is zero. Evaluated as ``exp(2 lse(lw) - lse(2 lw) - log n)`` to avoid overflow.
    """
    lw = _np(log_w).ravel()
    n = lw.size
    if n == 0:
        return float("nan")
    lse1 = logsumexp(lw)
    if not np.isfinite(lse1):
        return 0.0
    return float(np.exp(2.0 * lse1 - logsumexp(2.0 * lw) - math.log(n)))


def energy_w1(u_samples, u_ref, weights=None) -> float:
    """1D Wasserstein-1 distance between sample energies (optionally weighted) and reference energies.

    Parameters
    ----------
    u_samples : ``[n]`` energies of model samples (raw, not regularized).
    u_ref : ``[m]`` reference energies.
    weights : ``[n]`` non-negative weights of the samples (e.g. :func:`self_normalized_weights`),
        or None for the raw samples.

    Returns
    -------
    W1 in units of the energies (kT). Non-finite sample energies (and their weights) are dropped.
    """
    us, ur = _np(u_samples).ravel(), _np(u_ref).ravel()
    keep = np.isfinite(us)
    w = None
    if weights is not None:
        w = _np(weights).ravel()
        if w.shape != us.shape:
            raise ValueError(f"weights {w.shape} must match u_samples {us.shape}")
        keep &= np.isfinite(w)
        w = w[keep]
    us = us[keep]
    ur = ur[np.isfinite(ur)]
    if us.size == 0 or (w is not None and w.sum() <= 0):
        return float("inf")
    return float(wasserstein_distance(us, ur, u_weights=w))


def interatomic_distances(x) -> np.ndarray:
    """Distances of the unique pairs ``i < j``.

    Parameters
    ----------
    x : ``[B, N, dim]``

    Returns
    -------
    ``[B, N (N - 1) / 2]`` numpy array (``triu_indices`` order).
    """
    a = _np(x)
    if a.ndim != 3:
        raise ValueError(f"x must be [B, N, dim], got {a.shape}")
    i, j = np.triu_indices(a.shape[1], k=1)
    return np.linalg.norm(a[:, i] - a[:, j], axis=-1)


def distance_histogram_distance(x, x_ref, weights=None, bins: int = 100,
                                range_: tuple[float, float] | None = None) -> float:
    """Total-variation distance between pooled interatomic-distance histograms.

    All pair distances of all configurations are pooled into one histogram for the samples
    (each configuration's pairs carry its weight) and one for the reference, on shared bins;
    the result is ``1/2 * sum_b |p_b - q_b|`` in ``[0, 1]`` (0: identical histograms).

    Parameters
    ----------
    x : ``[B, N, dim]`` samples.
    x_ref : ``[M, N, dim]`` reference.
    weights : ``[B]`` sample weights, or None.
    bins : number of bins.
    range_ : histogram range; default spans the reference distances (samples outside it fall in
        no bin, i.e. count as mass the reference does not have).
    """
    d = interatomic_distances(x)
    d_ref = interatomic_distances(x_ref).ravel()
    w = None
    if weights is not None:
        wb = _np(weights).ravel()
        if wb.shape[0] != d.shape[0]:
            raise ValueError(f"weights {wb.shape} must have one entry per configuration ({d.shape[0]})")
        w = np.repeat(wb, d.shape[1])
    d = d.ravel()
    if range_ is None:
        range_ = (float(d_ref.min()), float(d_ref.max()))
    p, edges = np.histogram(d, bins=bins, range=range_, weights=w)
    q, _ = np.histogram(d_ref, bins=edges)
    total_p = w.sum() if w is not None else d.size
    if total_p <= 0:
        return 1.0
    p = p / total_p
    q = q / d_ref.size
    # Sample mass outside the reference range is unmatched: add it to the distance.
    outside = max(0.0, 1.0 - p.sum())
    return float(0.5 * (np.abs(p - q).sum() + outside))


def nll(log_q_ref) -> float:
    """Negative log-likelihood ``-mean log q(x_ref)`` in nats over held-out reference samples ``[n]``."""
    return float(-np.mean(_np(log_q_ref)))
