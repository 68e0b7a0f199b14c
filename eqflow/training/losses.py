"""Training losses: reverse KL from the energy alone, maximum likelihood on samples, their mix."""
from __future__ import annotations

import torch

from ..flows import MixtureFlow
from ..targets import Energy, regularize_energy

__all__ = ["reverse_kl_loss", "maximum_likelihood_loss"]


def reverse_kl_loss(flow, target: Energy, n: int, energy_cut: float = 1e3):
    """``KL(q || p) - log Z = E_q[log q(x) + u(x)]`` estimated on ``n`` reparameterized samples.

    Energies are regularized above ``energy_cut`` (kT) for the gradient; samples whose energy or
    log-density is not finite are dropped and counted. With a :class:`MixtureFlow` of K > 1
    components the samples are stratified (n/K per component) and weighted by ``K·π_k``, which makes
    ``Σ_k π_k E_{q_k}[log q + u]`` exact in ``π`` (no score-function term is needed).

    Returns
    -------
    loss : scalar tensor (NaN if every sample was dropped)
    stats : dict with ``kl`` (float), ``n_dropped`` (int), ``log_w`` ``[n]`` (raw ``-u - log q``,
        detached, ``-inf`` where dropped), ``energy`` (mean raw energy of the kept samples)
    """
    if isinstance(flow, MixtureFlow) and flow.n_components > 1:
        x, log_q, k = flow.sample_with_components(n, stratified=True)
        weights = flow.n_components * flow.base.log_weights.exp()[k]
    else:
        x, log_q = flow.sample(n)
        weights = None
    u_raw = target.energy(x)
    u = regularize_energy(u_raw, cut=energy_cut)
    ok = torch.isfinite(u) & torch.isfinite(log_q)
    terms = (log_q + u)[ok]
    if weights is not None:
        terms = terms * weights[ok]
    loss = terms.mean() if ok.any() else torch.full((), float("nan"), dtype=x.dtype)
    log_w = torch.where(ok, -u_raw - log_q, torch.full_like(u_raw, -float("inf"))).detach()
    stats = dict(kl=float(loss.detach()), n_dropped=int((~ok).sum()), log_w=log_w,
                 energy=float(u_raw[ok].detach().mean()) if ok.any() else float("nan"))
    return loss, stats


def maximum_likelihood_loss(flow, x: torch.Tensor):
    """``-mean log q(x)`` on CoM-free samples ``x`` ``[B, N, dim]`` (non-finite terms dropped)."""
    log_q = flow.log_prob(x)
    ok = torch.isfinite(log_q)
    loss = -log_q[ok].mean() if ok.any() else torch.full((), float("nan"), dtype=x.dtype)
    return loss, dict(nll=float(loss.detach()), n_dropped=int((~ok).sum()))
