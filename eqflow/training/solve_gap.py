"""Is training exploiting its fixed-step solve? The change of the sampled ``log q`` at twice the steps.

Reverse KL through a fixed-step ODE solve trains the *integrated* density of that solve. Where the
solve is too coarse for the field, the loss rewards fields whose discretization error flatters
``log q``: DW4 at 4 rk4 steps was 8 nats too good (ESS 0.01 at a converged solve), LJ55's pair field
at 8 steps 5 nats after two hours, DW4's 4-layer EGNN at 6 steps 0.15 nats. The evaluation reports
this once, at the end (``logq_solver_mae``); this check reports it while training, for the
*training* solve, so a run that starts to exploit it can be stopped or given more steps early.

The same base points (and mixture components, and Hutchinson probe) are pushed through the training
solve and through one with ``factor`` times the steps: both solves start from one RNG seed, so the
difference is discretization error only, never the Hutchinson estimator's variance (a fresh probe
would report the probe's noise, several nats per sample on DW4, as solver error).
"""
from __future__ import annotations

import torch

__all__ = ["training_solve_gap"]


@torch.no_grad()
def training_solve_gap(model, n: int, seed: int = 0, factor: int = 2) -> dict:
    """Mean and max ``|log q_K - log q_{factor·K}|`` over ``n`` samples of the model's own solve.

    Parameters
    ----------
    model : a continuous flow (``solver_settings``, ``using_solver``, ``sample``); models without an ODE
        (e.g. the IC baseline) return ``{}``
    n : samples (their log-densities use the model's training divergence)
    seed : RNG seed of both solves; the caller's RNG state is left untouched

    Returns
    -------
    ``{"solve_gap": mean, "solve_gap_max": max}`` in nats over the finite pairs (NaN if none).
    """
    if n < 1:
        raise ValueError(f"the solve check needs n >= 1 samples, got {n}")
    settings = getattr(model, "solver_settings", None)
    if settings is None or not hasattr(model, "using_solver"):
        return {}
    from ..evaluation.report import paired_solves

    def sample(s):
        with model.using_solver(s):
            return model.sample(n)

    (_, lq1), (_, lq2) = paired_solves(sample, (settings, settings.refined(factor)), seed,
                                       next(model.parameters()).device)
    diff = (lq2.double() - lq1.double()).abs()
    diff = diff[torch.isfinite(diff)]
    if not len(diff):
        return {"solve_gap": float("nan"), "solve_gap_max": float("nan")}
    return {"solve_gap": float(diff.mean()), "solve_gap_max": float(diff.max())}
