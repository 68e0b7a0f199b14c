"""Evaluate a generator against the target and reference samples: metrics, plots, summary table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dd
from .metrics import (distance_histogram_distance, energy_w1, ess, ess_split, log_weights, max_weight, nll,
                      pareto_k, self_normalized_weights)
from .sampling import (draw_samples, energies_in_batches, fold_samples, gather_samples, is_molecule, load_samples,
                       shard_seed)

__all__ = ["evaluate_generator", "format_summary", "add_delta_f_error", "save_summary", "energies_in_batches", "solver_check",
           "fold_samples"]


def evaluate_generator(gen, reference=None, out_dir=None, n_samples: int | None = None,
                       nll_samples: int | None = None, plots: bool = True, progress: bool = False,
                       samples: dict | str | Path | None = None, seed: int | None = None,
                       distributed: bool = False) -> dict | None:
    """All DESIGN.md metrics of a :class:`~eqflow.generator.Generator`: any model of the protocol
    (:mod:`eqflow.models`) with its target, from a config or built by hand.

    Molecules: a reflection-symmetric model (``q(x) = q(-x)``, eqflow's E(3) flows) has its mirror
    samples folded onto the target's own enantiomer (the chirality of each chiral centre in the
    target's structure) and ``log 2`` added to its log-densities; a model that makes one enantiomer
    (the IC baseline) is scored as it is. ``d_fraction`` is the mirror fraction before folding.

    Parameters
    ----------
    gen : generator (model + target, optional config: defaults of the arguments below come from
        ``config.eval`` when there is one)
    reference : held-out :class:`~eqflow.distributions.ReferenceData` (test split) or None
    out_dir : folder for plots (``energy_hist.png``, ``distance_hist.png`` or ``ramachandran.png``)
    n_samples : model samples (default ``eval.n_samples``, else 10,000)
    nll_samples : reference samples scored for the NLL (default ``eval.nll_samples``, else 2,000)
    samples : score this sample set instead of drawing ``n_samples``: a dict of
        :mod:`~eqflow.evaluation.sampling` (already folded) or the path of a ``scripts/sample.py``
        file (distributed: read by rank 0 alone)
    seed : seed the RNG first (:func:`~eqflow.evaluation.sampling.shard_seed`: ``torch.manual_seed(seed)``
        in one process, so the draw is that of ``sample.py --seed``); None uses the current RNG
    distributed : under torchrun (process group joined), call on every rank: each rank draws its
        share of ``n_samples`` from its own stream (``seed`` required) and scores its share of the
        NLL reference points; samples and reference log-densities are gathered to rank 0 before
        any metric, so rank 0 computes the numbers one process would on the same samples. Only
        rank 0 returns metrics and writes plots; the others return None. False (default) keeps
        everything in this process even when a process group exists (training's rank-0 evaluation).

    Returns
    -------
    dict of floats: ``ess`` (with ``ess_split_min``/``ess_split_max`` over five disjoint fifths of the
    draw, ``pareto_k`` and ``max_weight``: :mod:`eqflow.evaluation.metrics`), ``n_nonfinite``, ``mean_energy``, ``energy_w1_raw``, ``energy_w1_reweighted``,
    ``nll``, ``distance_tv_raw``, ``distance_tv_reweighted`` and, for molecules, ``d_fraction``,
    ``p_phi_pos``, ``delta_f`` (with ``_std``) raw and reweighted, basin populations and
    ``rama_kl`` — the reference's own values alongside (``ref_*``).
    """
    cfg = gen.config
    info = dd.dist_info() if distributed else dd.DistInfo()
    if nll_samples is None:
        nll_samples = cfg.eval.nll_samples if cfg is not None else 2000
    n_check = (cfg.eval.solver_check if cfg is not None else 200) if gen.solver is not None else 0
    if seed is not None:
        torch.manual_seed(shard_seed(seed, info.rank, info.world_size))
    if isinstance(samples, (str, Path)):
        samples = load_samples(samples) if info.is_main else {}
    if samples is None:
        n_samples = n_samples or (cfg.eval.n_samples if cfg is not None else 10000)
        if seed is None and info.enabled:
            raise ValueError("distributed evaluation needs a seed: every rank must draw different samples")
        samples = draw_samples(gen, dd.shard_sizes(n_samples, info.world_size)[info.rank],
                               progress=progress and info.is_main)
        if info.enabled:
            samples = gather_samples(samples)
    lq_ref = None
    if reference is not None and len(reference) and nll_samples:
        xr = reference.positions[:nll_samples]
        bounds = np.cumsum([0] + dd.shard_sizes(len(xr), info.world_size))
        lq_ref = gen.log_prob(xr[bounds[info.rank]:bounds[info.rank + 1]])
        if info.enabled:
            lq_ref = dd.all_gather_cat(lq_ref)
    if not info.is_main:
        return None
    x, log_q, u = samples["x"], samples["log_q"], samples["u"]
    n_samples = len(x)
    molecule = is_molecule(gen.target)
    out = {"n_samples": n_samples, "model": type(gen.model).__name__,
           "eval_solver": gen.solver.label if gen.solver is not None else "none",
           "eval_divergence": gen.eval_divergence() if gen.solver is not None else "none"}
    if n_check:
        out.update(solver_check(gen, min(n_check, n_samples)))
    symmetric = gen.reflection_symmetric
    centers = getattr(gen.target, "chiral_centers", None) or []
    out.update({k: samples[k] for k in ("d_fraction", "stereo_mismatch_fraction", "folded") if k in samples})
    log_w, n_bad = log_weights(u, log_q, return_count=True)
    w = self_normalized_weights(log_w)
    finite_u = u[torch.isfinite(u)]
    split = ess_split(log_w, 5)
    # How far one draw's ESS can be trusted: the spread over five disjoint fifths of the draw, the
    # Pareto tail shape of the weights (>= 0.7: unreliable) and the largest normalized weight.
    out.update(ess=ess(log_w), ess_split_min=float(split.min()), ess_split_max=float(split.max()),
               pareto_k=pareto_k(log_w), max_weight=max_weight(log_w), n_nonfinite=n_bad,
               mean_energy=float(finite_u.mean()) if len(finite_u) else float("nan"),
               mean_energy_reweighted=float(np.nansum(w * np.where(np.isfinite(u.numpy()), u.numpy(), 0.0))))
    if reference is not None and len(reference):
        u_ref = reference.energies
        ok = torch.isfinite(u).numpy()
        out["ref_mean_energy"] = float(u_ref.mean())
        out["energy_w1_raw"] = energy_w1(u.numpy()[ok], u_ref)
        out["energy_w1_reweighted"] = energy_w1(u.numpy()[ok], u_ref, weights=w[ok])
        out["distance_tv_raw"] = distance_histogram_distance(x, reference.positions)
        out["distance_tv_reweighted"] = distance_histogram_distance(x, reference.positions, weights=w)
        if lq_ref is not None:
            if molecule and centers and symmetric:  # the reference is L only; folded density is 2q there
                lq_ref = lq_ref + math.log(2.0)
            out["nll"] = nll(lq_ref)
    if molecule:
        out.update(_molecular_metrics(gen, x, w, reference, out_dir if plots else None))
    if plots and out_dir is not None:
        from .plots import plot_distance_histograms, plot_energy_histograms
        out_dir = Path(out_dir)
        if reference is not None and len(reference):
            plot_energy_histograms(u, log_w, reference.energies, out_dir / "energy_hist.png")
            if not molecule:
                plot_distance_histograms(x, log_w, reference.positions, out_dir / "distance_hist.png")
    return out


def paired_solves(sample, solves, seed: int, device) -> list:
    """``[(x, log_q), ...]`` (on the CPU) from ``sample(settings)`` for each of ``solves``, every one
    started from the same RNG seed: the same base points, mixture components and Hutchinson probe, so
    the results differ by discretization alone. The caller's RNG state is left untouched."""
    devices = [device] if torch.device(device).type == "cuda" else []
    runs = []
    for settings in solves:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            x, log_q = sample(settings)
        runs.append((x.cpu(), log_q.cpu()))
    return runs


def solver_check(gen, n: int, seed: int = 0) -> dict:
    """How far the evaluation's sampling solve is from converged, on the numbers the weights use.

    The same ``n`` base points are pushed through the sampling solve twice: at the evaluation
    solver and with twice the steps (half the tolerances). Both solves start from one RNG seed, so
    they share the base point ``z``, the mixture component and, with Hutchinson divergence, the
    probe ``ε`` (drawn after ``z`` in both). A sample's reported ``log q = log p(z) - ∫ div v dt`` is
    integrated along its own path from ``z``; re-solving that path with more steps changes only the
    discretization, so ``|log q_n - log q_2n|`` is the solver error of the reported number, with no
    estimator noise in it (a fresh probe would add the Hutchinson variance, and re-scoring ``x`` by a
    reverse solve would mix in the round trip's error and start from a different ``z``).

    Returns ``logq_solver_mae`` and ``logq_solver_max`` (nats; keep the mean well below 0.1, else
    raise ``eval.n_steps``) and ``x_solver_rms``, the rms displacement of the samples per coordinate
    between the two solves (length units of the target). The caller's RNG state is left untouched.
    """
    if n <= 0:
        raise ValueError(f"solver check needs n >= 1 samples, got {n}")
    (x1, lq1), (x2, lq2) = paired_solves(lambda s: gen.sample(n, solver=s),
                                         (gen.solver_settings(), gen.solver_settings(refine=2)), seed, gen.device)
    diff = (lq2 - lq1).abs()
    ok = torch.isfinite(diff)
    diff = diff[ok]
    dx = (x2 - x1)[ok].pow(2).mean().sqrt() if ok.any() else torch.tensor(float("nan"))
    return {"logq_solver_mae": float(diff.mean()) if len(diff) else float("nan"),
            "logq_solver_max": float(diff.max()) if len(diff) else float("nan"),
            "x_solver_rms": float(dx)}


def _molecular_metrics(gen, x, w, reference, out_dir) -> dict:
    from .ramachandran import delta_f, mode_populations, phi_psi, plot_ramachandran, ramachandran_kl
    dih = gen.target.dihedrals
    phi, psi = phi_psi(x, phi=dih["phi"], psi=dih["psi"])
    res = {}
    for tag, weights in (("raw", None), ("reweighted", w)):
        df, df_std = delta_f(phi, weights)
        res[f"delta_f_{tag}"], res[f"delta_f_{tag}_std"] = df, df_std
        for name, (p, s) in mode_populations(phi, psi, weights).items():
            res[f"pop_{name}_{tag}"] = p
    panels = {"model (raw)": (phi, psi, None), "model (reweighted)": (phi, psi, w)}
    if reference is not None and len(reference):
        phi_r, psi_r = phi_psi(reference.positions, phi=dih["phi"], psi=dih["psi"])
        res["ref_delta_f"], res["ref_delta_f_std"] = delta_f(phi_r, block=50)
        for name, (p, s) in mode_populations(phi_r, psi_r, block=50).items():
            res[f"ref_pop_{name}"] = p
        add_delta_f_error(res)
        res["rama_kl_raw"] = ramachandran_kl(phi, psi, None, phi_r, psi_r)
        res["rama_kl_reweighted"] = ramachandran_kl(phi, psi, w, phi_r, psi_r)
        panels["reference (MD)"] = (phi_r, psi_r, None)
    if out_dir is not None:
        plot_ramachandran(panels, str(Path(out_dir) / "ramachandran.png"))
    res.update(energy_term_medians(gen.target, x, reference))
    return res


def energy_term_medians(target, x, reference=None, n_max: int = 1000) -> dict:
    """Median reduced energy of each kind of force (``target.energy_terms``, OpenMM targets) over the
    first ``n_max`` model samples (``u_median_<force>_raw``) and reference frames
    (``ref_u_median_<force>``): which term a model has not learned yet. Empty for other targets."""
    if not hasattr(target, "energy_terms"):
        return {}
    res = {}
    for key, pos in (("u_median_{}_raw", x), ("ref_u_median_{}", None if reference is None else reference.positions)):
        if pos is None or not len(pos):
            continue
        for name, u in target.energy_terms(pos[:n_max]).items():
            res[key.format(name)] = float(np.median(u))  # +inf rows (unevaluable) count as high
    return res


def add_delta_f_error(metrics: dict) -> dict:
    """Add ``delta_f_error`` = |reweighted ΔF(phi) - MD reference ΔF(phi)| (kT) where both are in
    ``metrics`` and it is not (summaries written before it was part of the evaluation). In place."""
    if "delta_f_error" not in metrics and "delta_f_reweighted" in metrics and "ref_delta_f" in metrics:
        metrics["delta_f_error"] = abs(float(metrics["delta_f_reweighted"]) - float(metrics["ref_delta_f"]))
    return metrics


def format_summary(metrics: dict, title: str = "eqflow summary") -> str:
    """A two-column text table of ``metrics`` (floats to 4 significant digits)."""
    width = max([len(k) for k in metrics] + [10])
    lines = [title, "-" * (width + 16)]
    for k, v in metrics.items():
        if isinstance(v, float):
            v = "nan" if math.isnan(v) else f"{v:.4g}"
        lines.append(f"{k:<{width}}  {v}")
    return "\n".join(lines)


def save_summary(metrics: dict, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(metrics, indent=2, default=float))
    return path
