"""Compare trained models on one target with the same metrics: eqflow's Cartesian flow against the
internal-coordinate baseline (``scripts/compare_ic.py``), or any other models of the protocol.

Every model is scored by :func:`~eqflow.evaluation.report.evaluate_generator` on the same reference
split: log-densities on the same measure (DESIGN.md: Lebesgue on the CoM-free subspace), enantiomer
folding only for reflection-symmetric models. Costs come from the runs themselves (seconds per
training step, energy evaluations) and from timing the sampler here (samples per second with log
weights, i.e. sampling with log q plus the energy).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .checkpoint import read_checkpoint
from .evaluation.report import energies_in_batches, evaluate_generator, fold_samples
from .evaluation.sampling import draw_samples
from .generator import load_checkpoint

__all__ = ["compare_runs", "format_comparison", "COMPARISON_ROWS", "ESS_RELIABILITY_ROWS"]

# How far one draw's ESS can be trusted (eqflow.evaluation.report): the rows under "ESS" in the tables
ESS_RELIABILITY_ROWS = [
    ("ess_split_min", "  ESS, lowest of 5 fifths"),
    ("ess_split_max", "  ESS, highest of 5 fifths"),
    ("pareto_k", "  Pareto k (>= 0.7: ESS unreliable)"),
]

# (summary key, label) in the order of the printed table
COMPARISON_ROWS = [
    ("model", "model"),
    ("ess", "ESS (fraction of n)"),
    *ESS_RELIABILITY_ROWS,
    ("eval_divergence", "evaluation divergence"),
    ("eval_solver", "evaluation solve"),
    ("logq_solver_mae", "log q solver error (nats)"),
    ("train_solve_gap", "training solve vs 2x steps, last check (nats)"),
    ("train_solve_steps", "training solve steps at the end"),
    ("nll", "NLL on MD reference (nats, CoM-free measure)"),
    ("delta_f_reweighted", "ΔF(phi) reweighted (kT)"),
    ("delta_f_reweighted_std", "  bootstrap error (kT)"),
    ("ref_delta_f", "ΔF(phi) MD reference (kT)"),
    ("delta_f_error", "|ΔF error| (kT)"),
    ("rama_kl_raw", "Ramachandran KL raw"),
    ("rama_kl_reweighted", "Ramachandran KL reweighted"),
    ("pop_phi>0_raw", "P(phi>0) raw"),
    ("pop_phi>0_reweighted", "P(phi>0) reweighted"),
    ("ref_pop_phi>0", "P(phi>0) MD reference"),
    ("pop_beta_C7eq_raw", "P(beta/C7eq) raw"),
    ("pop_alphaR_raw", "P(alphaR) raw"),
    ("pop_alphaL_raw", "P(alphaL) raw"),
    ("pop_beta_C7eq_reweighted", "P(beta/C7eq) reweighted"),
    ("pop_alphaR_reweighted", "P(alphaR) reweighted"),
    ("pop_alphaL_reweighted", "P(alphaL) reweighted"),
    ("ref_pop_beta_C7eq", "P(beta/C7eq) MD reference"),
    ("ref_pop_alphaR", "P(alphaR) MD reference"),
    ("ref_pop_alphaL", "P(alphaL) MD reference"),
    ("energy_w1_raw", "energy W1 raw (kT)"),
    ("energy_w1_reweighted", "energy W1 reweighted (kT)"),
    ("d_fraction", "fraction of D samples (before folding)"),
    ("steps", "training steps"),
    ("train_seconds", "training seconds"),
    ("seconds_per_step", "seconds per training step"),
    ("samples_per_second", "samples/s with log weights"),
    ("energy_evaluations", "energy evaluations in training"),
]


def _run_costs(run_dir: Path) -> dict:
    state = read_checkpoint(run_dir / "checkpoint.pt")
    cfg = state["metadata"]["config"]["train"]
    steps, seconds = int(state["step"]), float(state["elapsed"])
    # Reverse KL evaluates the energy of its whole batch once per step; ML on MD frames needs none.
    energy_evals = steps * cfg["batch_size"] if cfg["kl_weight"] > 0 else 0
    return {"steps": steps, "train_seconds": round(seconds, 1),
            "seconds_per_step": seconds / steps if steps else math.nan, "energy_evaluations": energy_evals}


def _sampling_rate(gen, n: int) -> float:
    """Samples per second with log weights: sample with log q, fold, and score the energy."""
    t0 = time.perf_counter()
    x, log_q = gen.sample(n)
    x, log_q, _ = fold_samples(gen, x.cpu(), log_q.cpu())
    energies_in_batches(gen.target, x, gen.batch_size)
    return n / (time.perf_counter() - t0)


def compare_runs(runs: dict, reference, out_dir=None, n_samples: int | None = None,
                 nll_samples: int | None = None, rate_samples: int = 200, target=None,
                 progress: bool = False) -> dict:
    """Evaluate each run folder of ``runs`` (name -> folder) on ``reference`` with the same metrics.

    Returns name -> metrics (``evaluate_generator``'s, plus the costs of the run and
    ``delta_f_error``). With ``out_dir``, each model's plots go to ``out_dir/<name>/`` and
    ``ramachandran_compare.png`` shows the models (raw and reweighted) beside the reference.
    """
    from .evaluation.ramachandran import phi_psi, plot_ramachandran

    out = {}
    panels = {}
    for name, run in runs.items():
        run = Path(run)
        gen = load_checkpoint(run, target=target)
        target = gen.target  # one target (and OpenMM pool) for every model
        # One draw serves the metrics and the Ramachandran panel below (it was drawn twice).
        torch.manual_seed(0)
        cfg_n = gen.config.eval.n_samples if gen.config is not None else 10000
        samples = draw_samples(gen, n_samples or cfg_n, progress=progress)
        metrics = evaluate_generator(gen, reference, out_dir=None if out_dir is None else Path(out_dir) / name,
                                     nll_samples=nll_samples, progress=progress, samples=samples)
        metrics.update(_run_costs(run))
        metrics["samples_per_second"] = _sampling_rate(gen, rate_samples)
        out[name] = metrics
        dih = getattr(gen.target, "dihedrals", None)
        if out_dir is not None and dih is not None:
            x, log_w = samples["x"], samples["log_w"]
            w = torch.softmax(torch.where(torch.isfinite(log_w), log_w, -torch.inf), 0).numpy()
            phi, psi = phi_psi(x, phi=dih["phi"], psi=dih["psi"])
            panels[f"{name} (raw)"] = (phi, psi, None)
            panels[f"{name} (reweighted)"] = (phi, psi, w)
    if panels and reference is not None and len(reference):
        dih = target.dihedrals
        panels["MD reference"] = (*phi_psi(reference.positions, phi=dih["phi"], psi=dih["psi"]), None)
        plot_ramachandran(panels, str(Path(out_dir) / "ramachandran_compare.png"))
    return out


def format_comparison(results: dict, title: str = "comparison", rows=None) -> str:
    """One table: a row per metric of ``rows`` (``(key, label)`` pairs, default :data:`COMPARISON_ROWS`)
    present in any of the results, a column per model."""
    names = list(results)
    rows = [(label, [results[n].get(key, "") for n in names]) for key, label in (rows or COMPARISON_ROWS)
            if any(key in results[n] for n in names)]

    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    width = max(len(label) for label, _ in rows)
    col = max([len(n) for n in names] + [max((len(fmt(v)) for _, vs in rows for v in vs), default=8)])
    lines = [title, f"{'metric':<{width}}  " + "  ".join(f"{n:>{col}}" for n in names),
             "-" * (width + (col + 2) * len(names))]
    lines += [f"{label:<{width}}  " + "  ".join(f"{fmt(v):>{col}}" for v in vs) for label, vs in rows]
    return "\n".join(lines)
