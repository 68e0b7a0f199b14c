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
    "ess_split",
    "pareto_k",
    "max_weight",
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


def ess_split(log_w, n_parts: int = 5) -> np.ndarray:
    """ESS fractions (:func:`ess`) of ``n_parts`` disjoint consecutive parts of the draw ``[n]``.

    The samples of one draw are independent, so the parts are ``n_parts`` independent draws of
    ``n / n_parts`` samples: their spread shows how much the ESS of a fresh draw can differ. With
    heavy-tailed weights the ESS of one draw is decided by its few largest weights and varies by
    factors between draws (a part that misses the rare large weights reports a flattering ESS).

    Returns
    -------
    ``[n_parts]`` ESS fractions in draw order (fewer parts when ``n < n_parts``).
    """
    lw = _np(log_w).ravel()
    k = max(1, min(int(n_parts), lw.size))
    return np.array([ess(part) for part in np.array_split(lw, k)])


def max_weight(log_w) -> float:
    """The largest self-normalized weight: 1/n for equal weights, near 1 when one sample decides."""
    w = self_normalized_weights(log_w)
    return float(w.max()) if w.size else float("nan")


def pareto_k(log_w) -> float:
    """Shape ``k`` of a generalized Pareto fit to the largest importance weights (PSIS diagnostic).

    Following Vehtari et al., "Pareto smoothed importance sampling" (JMLR 2024), the largest
    ``M = min(0.2 n, 3 sqrt(n))`` weights, minus the next largest, are fitted by a generalized Pareto
    distribution. ``k < 0.5``: the weights have a finite variance and the ESS of one draw is
    reliable; ``0.5 <= k < 0.7``: usable but noisy; ``k >= 0.7``: the ESS (and any reweighted
    estimate) of one draw is unreliable: a fresh draw can differ by factors.

    The fit is scipy's maximum likelihood with the location fixed at 0 (arviz's ``psislw`` uses the
    Zhang-Stephens estimator; arviz would bring xarray and pandas for this one number). Weights are
    shifted by their maximum in log space first, so the fit never overflows.

    Returns
    -------
    ``k`` (float); nan when fewer than 5 tail weights are finite (n below ~25).
    """
    from scipy.stats import genpareto

    lw = _np(log_w).ravel()
    lw = np.sort(lw[np.isfinite(lw)])
    n = lw.size
    m = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    if m < 5 or n <= m:
        return float("nan")
    shifted = np.exp(lw[-(m + 1):] - lw[-1])  # threshold and the m largest, max = 1
    excess = shifted[1:] - shifted[0]
    if not np.any(excess > 0):
        return 0.0  # (near-)equal top weights: no tail at all
    excess = excess / excess.max()  # scale-free: the shape does not depend on the units
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k, _, _ = genpareto.fit(excess, floc=0.0)
    return float(k)


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
