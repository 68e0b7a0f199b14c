"""Evaluate a generator against the target and reference samples: metrics, plots, summary table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .metrics import distance_histogram_distance, energy_w1, ess, log_weights, nll, self_normalized_weights

__all__ = ["evaluate_generator", "format_summary", "energies_in_batches", "solver_check", "fold_samples"]


def energies_in_batches(target, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Raw reduced energies ``[n]`` of ``x`` ``[n, N, dim]`` without autograd."""
    with torch.no_grad():
        return torch.cat([target.energy(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _is_molecule(target) -> bool:
    return getattr(target, "dihedrals", None) is not None and getattr(target, "topology", None) is not None


def evaluate_generator(gen, reference=None, out_dir=None, n_samples: int | None = None,
                       nll_samples: int | None = None, plots: bool = True, progress: bool = False) -> dict:
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

    Returns
    -------
    dict of floats: ``ess``, ``n_nonfinite``, ``mean_energy``, ``energy_w1_raw``, ``energy_w1_reweighted``,
    ``nll``, ``distance_tv_raw``, ``distance_tv_reweighted`` and, for molecules, ``d_fraction``,
    ``p_phi_pos``, ``delta_f`` (with ``_std``) raw and reweighted, basin populations and
    ``rama_kl`` — the reference's own values alongside (``ref_*``).
    """
    cfg = gen.config
    n_samples = n_samples or (cfg.eval.n_samples if cfg is not None else 10000)
    if nll_samples is None:
        nll_samples = cfg.eval.nll_samples if cfg is not None else 2000
    n_check = (cfg.eval.solver_check if cfg is not None else 200) if gen.solver is not None else 0
    x, log_q = gen.sample(n_samples, progress=progress)
    x, log_q = x.cpu(), log_q.cpu()  # metrics, energies of CPU targets and plots work on the host
    molecule = _is_molecule(gen.target)
    out = {"n_samples": n_samples, "model": type(gen.model).__name__,
           "eval_solver": gen.solver.label if gen.solver is not None else "none",
           "eval_divergence": gen.divergence if gen.solver is not None else "none"}
    if n_check:
        out.update(solver_check(gen, x[:n_check], log_q[:n_check]))
    symmetric = gen.reflection_symmetric
    centers = getattr(gen.target, "chiral_centers", None) or []
    x, log_q, chir = fold_samples(gen, x, log_q)
    out.update(chir)
    u = energies_in_batches(gen.target, x, gen.batch_size)
    log_w, n_bad = log_weights(u, log_q, return_count=True)
    w = self_normalized_weights(log_w)
    finite_u = u[torch.isfinite(u)]
    out.update(ess=ess(log_w), n_nonfinite=n_bad,
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
        if nll_samples:
            xr = reference.positions[:nll_samples]
            lq_ref = gen.log_prob(xr)
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


def fold_samples(gen, x: torch.Tensor, log_q: torch.Tensor | None):
    """Samples of ``gen`` as evaluation sees them: for a chiral molecule and a reflection-symmetric
    model, mirror images folded onto the target's own enantiomer with ``log q + log 2``; otherwise
    unchanged. Returns ``(x, log_q, stats)`` with ``d_fraction`` (before folding),
    ``stereo_mismatch_fraction`` and ``folded`` (empty stats for targets without chiral centres)."""
    centers = getattr(gen.target, "chiral_centers", None) or []
    if not _is_molecule(gen.target) or not centers:
        return x, log_q, {}
    from .chirality import fold_to_reference, l_sign
    signs = getattr(gen.target, "chiral_signs", None) or [l_sign(None, c, nb) for c, nb in centers]
    x_f, log_q_f, stats = fold_to_reference(x, log_q, centers, signs)
    stats["folded"] = bool(gen.reflection_symmetric)
    if stats["folded"]:
        return x_f, log_q_f, stats
    return x, log_q, stats


def solver_check(gen, x: torch.Tensor, log_q: torch.Tensor) -> dict:
    """How far the evaluation solve is from converged: ``log q`` of the samples ``x`` re-scored by a
    reverse solve with twice the steps (half the tolerances), against the sampling ``log q``.

    A large ``logq_solver_mae`` means the importance weights (and ESS) describe the solver's error as
    much as the model: raise ``eval.n_steps``. With Hutchinson evaluation it includes that estimator's
    noise.
    """
    lq_fine = gen.log_prob(x, solver=gen.solver_settings(refine=2))
    diff = (lq_fine - log_q).abs()
    diff = diff[torch.isfinite(diff)]
    return {"logq_solver_mae": float(diff.mean()) if len(diff) else float("nan"),
            "logq_solver_max": float(diff.max()) if len(diff) else float("nan")}


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
        res["rama_kl_raw"] = ramachandran_kl(phi, psi, None, phi_r, psi_r)
        res["rama_kl_reweighted"] = ramachandran_kl(phi, psi, w, phi_r, psi_r)
        panels["reference (MD)"] = (phi_r, psi_r, None)
    if out_dir is not None:
        plot_ramachandran(panels, str(Path(out_dir) / "ramachandran.png"))
    return res


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
