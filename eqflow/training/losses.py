"""Training losses: reverse KL from the energy alone, maximum likelihood on samples, their mix."""
from __future__ import annotations

import contextlib

import torch

from ..flows import MixtureFlow
from ..geometry import remove_mean
from ..targets import Energy, masked_energy, regularize_energy
from ..targets.regularize import clipped_force_energy

__all__ = ["reverse_kl_loss", "path_gradient_kl_loss", "maximum_likelihood_loss", "renyi_weights"]


def renyi_weights(log_w: torch.Tensor, alpha: float, gather=None) -> torch.Tensor:
    """Per-sample weights of the Rényi-α gradient: ``n·ŵ_i`` with ``ŵ ∝ w^(1-α)``, self-normalized.

    ``log_w`` ``[n]`` (detached, ``-inf`` where a sample was dropped) are raw log importance weights
    ``-u - log q``. ``alpha = 1`` gives ``n / n_kept`` on each kept sample (the reverse-KL mean);
    ``alpha = 0`` the weights of the importance-weighted bound ``log mean w``. ``gather`` (e.g.
    :func:`eqflow.distributed.all_gather_cat`) normalizes over every rank's samples, so that the ranks'
    average of ``mean(weights · terms)`` is the global self-normalized sum ``Σ ŵ_i terms_i``. Returns
    ``[n]``, zero where ``log_w`` is ``-inf`` (also when all are).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scaled = (1.0 - alpha) * log_w
    everyone = scaled if gather is None else gather(scaled)
    finite = torch.isfinite(everyone)
    if not finite.any():
        return torch.zeros_like(log_w)
    lse = torch.logsumexp(everyone[finite], 0)
    # n_global·ŵ_i: a rank's loss is the mean of weights·terms over its n_r = n_global/R samples and
    # the all-reduce averages the R ranks, so the result is Σ_all ŵ_i·terms_i (as in one process).
    w = torch.where(torch.isfinite(scaled), torch.exp(scaled - lse), torch.zeros_like(scaled))
    return w * everyone.numel()


def _training_energy(target: Energy, x: torch.Tensor, energy_cut: float, force_clip: float | None):
    """``(u_raw, u)``: raw energies (+inf with zero gradient where energy or force is not finite) and
    the ones training differentiates (log-damped above ``energy_cut``, or with ``force_clip`` the
    damped value with each atom's force capped)."""
    u_raw = masked_energy(target, x, force_clip)
    u = regularize_energy(u_raw, cut=energy_cut) if force_clip is None else clipped_force_energy(u_raw, energy_cut)
    return u_raw, u


def reverse_kl_loss(flow, target: Energy, n: int, energy_cut: float = 1e3, kinetic_weight: float = 0.0,
                    jacobian_weight: float = 0.0, force_clip: float | None = None, alpha: float = 1.0,
                    gather=None):
    """``KL(q || p) - log Z = E_q[log q(x) + u(x)]`` estimated on ``n`` reparameterized samples.

    ``kinetic_weight`` and ``jacobian_weight`` add ``λ_K E[∫|v|²dt] + λ_J E[∫‖∂v/∂x‖²_F dt]`` along the
    sampling trajectories (Finlay et al. 2020). Without them a fixed-step solver's error becomes part of
    the model: the training loss then rewards fields whose *integrated* log-density is wrong in its
    favour, and the flow's true density (a converged solve) is much worse than the loss says.

    Energies are regularized above ``energy_cut`` (kT) for the gradient (with ``force_clip``: the loss
    value is, the gradient is the force with each atom's norm capped at ``force_clip`` instead,
    :func:`~eqflow.targets.regularize.clipped_force_energy`); samples whose energy, force
    or log-density is not finite are dropped and counted, and the energy side of a dropped sample
    contributes an exactly zero gradient (:func:`~eqflow.targets.masked_energy`). A sample whose
    *flow* output is already non-finite cannot be separated from the batch's gradient (its NaN
    activations meet zero cotangents in every parameter's gradient sum): the Trainer then skips the
    step and counts it. With a :class:`MixtureFlow` of K > 1
    components the samples are stratified (n/K per component) and weighted by ``K·π_k``, which makes
    ``Σ_k π_k E_{q_k}[log q + u]`` exact in ``π`` (no score-function term is needed).

    ``alpha < 1`` trains the Rényi divergence of order ``α`` instead (Li & Turner 2016, "Rényi
    divergence variational inference"): its reparameterized gradient is reverse KL's with each sample
    weighted by ``ŵ_i ∝ w_i^(1-α)`` (self-normalized over the batch, detached, :func:`renyi_weights`),
    so samples where ``q`` under-weights ``p`` pull harder. Reverse KL (``α = 1``) only sees where ``q``
    already is; at ``α = 0`` the gradient is that of ``log mean w``, whose score part is the forward
    KL's gradient on the batch: mass-covering, at no extra cost per step. The weights use the
    training log-density, so it must be exact: a Hutchinson estimate carries several nats of probe
    noise per sample (DW4: batch ESS 0.01 against 0.74 exact), the weights then select that noise,
    and the config refuses the combination. ``stats['kl']`` stays the plain reverse-KL estimate.

    Returns
    -------
    loss : scalar tensor (NaN if every sample was dropped)
    stats : dict with ``kl`` (float, without the regularizers), ``n_dropped`` (int), ``log_w`` ``[n]``
        (raw ``-u - log q``, detached, ``-inf`` where dropped), ``energy`` (mean raw energy of the kept
        samples), and ``kinetic`` / ``jacobian`` (batch means) when regularized
    """
    regularize = kinetic_weight > 0 or jacobian_weight > 0
    with flow.recording_transport_cost() if regularize else contextlib.nullcontext():
        if isinstance(flow, MixtureFlow) and flow.n_components > 1:
            x, log_q, k = flow.sample_with_components(n, stratified=True)
            weights = flow.n_components * flow.base.log_weights.exp()[k]
        else:
            x, log_q = flow.sample(n)
            weights = None
        cost = flow.transport_cost if regularize else None
    u_raw, u = _training_energy(target, x, energy_cut, force_clip)
    ok = torch.isfinite(u) & torch.isfinite(log_q)
    terms = (log_q + u)[ok]
    if weights is not None:
        terms = terms * weights[ok]
    kl = terms.mean() if ok.any() else torch.full((), float("nan"), dtype=x.dtype)
    loss = kl
    if alpha != 1.0:
        raw = torch.where(ok, -u_raw - log_q, torch.full_like(u_raw, -float("inf"))).detach()
        rw = renyi_weights(raw, alpha, gather)
        # Mean over this rank's samples (all of them: dropped ones carry weight 0), as the ranks'
        # average then is the global self-normalized sum.
        loss = (terms * rw[ok]).sum() / n if ok.any() else kl
    extra = {}
    if regularize:
        c = cost[ok].mean(0) if ok.any() else torch.full((2,), float("nan"), dtype=x.dtype)
        loss = loss + kinetic_weight * c[0] + jacobian_weight * c[1]
        extra = dict(kinetic=float(c[0].detach()), jacobian=float(c[1].detach()))
    log_w = torch.where(ok, -u_raw - log_q, torch.full_like(u_raw, -float("inf"))).detach()
    stats = dict(kl=float(kl.detach()), n_dropped=int((~ok).sum()), log_w=log_w,
                 energy=float(u_raw[ok].detach().mean()) if ok.any() else float("nan"), **extra)
    return loss, stats


def path_gradient_kl_loss(flow, target: Energy, n: int, energy_cut: float = 1e3, force_clip: float | None = None):
    """Reverse KL with the *path* gradient (Roeder et al. 2017, "sticking the landing"; for continuous
    flows Vaitl et al. 2022): the same loss value as :func:`reverse_kl_loss`, but the gradient keeps
    only the part that flows through the samples,

        ∇θ ≈ mean_i  ∇x[u + log q_θ](x_i) · ∂x_i/∂θ,     x_i = φ_θ(z_i),

    and drops the score term ``∂θ log q_θ(x)|_x``, whose expectation is zero (q integrates to one).
    Both are unbiased; the path estimator's variance vanishes where ``q = p`` (then ``∇x[u + log q] = 0``),
    so near convergence each step carries signal rather than noise.

    Cost: one sampling solve without the divergence (its graph is kept for ``∂x/∂θ``), and one reverse
    solve ``x -> z`` with the flow's divergence, differentiated with respect to ``x`` only. With the
    Hutchinson divergence the gradient of ``log q`` in ``x`` is itself a one-probe estimate (unbiased,
    but the variance no longer vanishes); with an exact divergence (:class:`~eqflow.nn.PairwiseField`:
    closed form) it does.

    Mixture flows with K > 1 components are refused: the component draw is not reparameterizable, so
    the mixture weights would get no gradient. Transport-cost regularizers are refused too (use
    :func:`reverse_kl_loss`).

    Returns ``(loss, stats)`` as :func:`reverse_kl_loss`: ``loss`` has the value of the KL estimate and
    the path gradient; samples with a non-finite energy, log-density or gradient are dropped and counted.
    """
    if isinstance(flow, MixtureFlow) and flow.n_components > 1:
        raise ValueError("the path gradient needs a single-component flow (flow.n_components = 1): a mixture's "
                         "component draw is not reparameterizable")
    x, _ = flow.sample(n, with_log_prob=False)  # reparameterized: the graph to θ is kept for ∂x/∂θ
    # Projected again: float rounding must not trip log_prob's CoM-free check (the projection is a
    # no-op on the subspace, and grad_x . dx/dθ only sees the subspace: dx/dθ lies in it).
    xd = remove_mean(x.detach()).requires_grad_(True)
    with torch.enable_grad():
        log_q = flow.log_prob(xd)
        u_raw, u = _training_energy(target, xd, energy_cut, force_clip)
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        f = (u + log_q)[ok]
        (g,) = torch.autograd.grad(f.sum(), xd) if ok.any() else (torch.zeros_like(xd),)
    ok = ok & torch.isfinite(g).flatten(1).all(1)
    n_ok = int(ok.sum())
    if n_ok:
        kl = (u + log_q)[ok].detach().mean()
        surrogate = (g[ok].detach() * x[ok]).sum() / n_ok
        loss = surrogate - surrogate.detach() + kl  # the value of the KL, the gradient of the path
    else:
        kl = loss = torch.full((), float("nan"), dtype=x.dtype)
    log_w = torch.where(ok, -u_raw - log_q, torch.full_like(u_raw, -float("inf"))).detach()
    stats = dict(kl=float(kl), n_dropped=n - n_ok, log_w=log_w,
                 energy=float(u_raw[ok].detach().mean()) if n_ok else float("nan"))
    return loss, stats


def maximum_likelihood_loss(flow, x: torch.Tensor):
    """``-mean log q(x)`` on CoM-free samples ``x`` ``[B, N, dim]`` (non-finite terms dropped)."""
    log_q = flow.log_prob(x)
    ok = torch.isfinite(log_q)
    loss = -log_q[ok].mean() if ok.any() else torch.full((), float("nan"), dtype=x.dtype)
    return loss, dict(nll=float(loss.detach()), n_dropped=int((~ok).sum()))
