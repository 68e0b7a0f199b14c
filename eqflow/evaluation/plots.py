"""Diagnostic figures (matplotlib, Agg backend: no display needed).

Each function writes one image to ``path`` (format from the suffix), creates parent folders,
closes its figure and returns the path.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import _np, interatomic_distances, self_normalized_weights  # noqa: E402

__all__ = ["plot_training_curves", "plot_mode_diagnostics", "plot_energy_histograms", "plot_distance_histograms"]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _column(records, key):
    steps = [r["step"] for r in records if r.get(key) is not None and _finite(r[key])]
    vals = [float(r[key]) for r in records if r.get(key) is not None and _finite(r[key])]
    return np.asarray(steps), np.asarray(vals)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def plot_training_curves(metrics_records, path) -> Path:
    """Loss and ESS against training step, and the training solve's gap where it was checked.

    Parameters
    ----------
    metrics_records : list of dicts with ``step``, ``loss`` and optionally ``ess`` (a fraction) and
        ``solve_gap`` / ``solve_gap_max`` (``train.solve_check_every``: a third panel, log scale);
        rows missing a key, or with a non-finite value, are skipped for that curve.
    path : output image.
    """
    s_gap, gap = _column(metrics_records, "solve_gap")
    if gap.size:
        fig, (ax_l, ax_e, ax_g) = plt.subplots(1, 3, figsize=(15, 3.8))
        s_max, gap_max = _column(metrics_records, "solve_gap_max")
        ax_g.semilogy(s_gap, np.maximum(gap, 1e-8), marker="o", ms=3, lw=1, label="mean")
        if gap_max.size:
            ax_g.semilogy(s_max, np.maximum(gap_max, 1e-8), marker="o", ms=2, lw=0.8, ls="--", label="max")
        ax_g.axhline(0.1, color="C3", lw=0.8, ls=":", label="0.1 nats")
        ax_g.set_xlabel("step")
        ax_g.set_ylabel("|Δ log q| (nats)")
        ax_g.set_title("training solve vs twice the steps")
        ax_g.legend(fontsize=8)
    else:
        fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
    s, loss = _column(metrics_records, "loss")
    if loss.size:
        ax_l.plot(s, loss, lw=1)
        # A few early huge losses would flatten the rest of the curve.
        lo, hi = np.percentile(loss, [1, 99])
        pad = 0.1 * (hi - lo) if hi > lo else 1.0
        ax_l.set_ylim(lo - pad, hi + pad)
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")
    ax_l.set_title("training loss")
    s, v = _column(metrics_records, "val_nll")
    if v.size:  # held-out NLL on its own axis: it has another offset than the loss
        ax_v = ax_l.twinx()
        ax_v.plot(s, v, color="C3", marker="o", ms=3, lw=1)
        ax_v.set_ylabel("held-out NLL", color="C3")
    s, e = _column(metrics_records, "ess")
    title = "effective sample size"
    if not e.size:  # the trainer logs the ESS of each training batch
        s, e = _column(metrics_records, "ess_batch")
        # With the training solve and a Hutchinson log q: noisy and lower than the evaluated ESS.
        title = "batch ESS (training solve and divergence estimate)"
    if e.size:
        ax_e.plot(s, e, marker="o", ms=3, lw=1)
    ax_e.set_ylim(0, 1)
    ax_e.set_xlabel("step")
    ax_e.set_ylabel("ESS / n")
    ax_e.set_title(title)
    return _save(fig, path)


def _xy(records, xkey, ykey):
    rows = [r for r in records if _finite(r.get(xkey)) and _finite(r.get(ykey))]
    return np.asarray([float(r[xkey]) for r in rows]), np.asarray([float(r[ykey]) for r in rows])


def plot_mode_diagnostics(metrics_records, path) -> Path:
    """Mode populations and buffer ESS logged at each buffer refresh (``metrics.jsonl``).

    Three panels: populations of each mode against step (``pop_rw/<mode>`` solid, reweighted;
    ``pop_raw/<mode>`` dashed, the model's own); the buffer ESS (after weight control, and raw)
    against training time (seconds); the same against the number of target energy evaluations
    (``energy_evals``). Rows without a key are skipped for that curve; a system without mode labels
    gets an empty first panel.
    """
    fig, (ax_p, ax_t, ax_n) = plt.subplots(1, 3, figsize=(15, 3.8))
    modes = sorted({k.split("/", 1)[1] for r in metrics_records for k in r if k.startswith("pop_raw/")})
    for i, mode in enumerate(modes):
        color = f"C{i % 10}"
        s, v = _column(metrics_records, f"pop_rw/{mode}")
        if v.size:
            ax_p.plot(s, v, color=color, lw=1.2, marker="o", ms=2, label=mode)
        s, v = _column(metrics_records, f"pop_raw/{mode}")
        if v.size:
            ax_p.plot(s, v, color=color, lw=1, ls="--", label=None if _column(metrics_records, f"pop_rw/{mode}")[1].size
                      else mode)
    ax_p.set_ylim(0, 1)
    ax_p.set_xlabel("step")
    ax_p.set_ylabel("population")
    ax_p.set_title("modes (solid: reweighted, dashed: raw)")
    if modes:
        ax_p.legend(fontsize=7, loc="best")
    for ax, xkey, xlabel in ((ax_t, "time", "training time (s)"), (ax_n, "energy_evals", "energy evaluations")):
        for ykey, style, label in (("buffer_ess", "-", "after clipping"), ("buffer_ess_raw", "--", "raw")):
            x, y = _xy(metrics_records, xkey, ykey)
            if y.size:
                ax.plot(x, y, ls=style, marker="o", ms=2, lw=1, label=label)
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("buffer ESS / n")
        ax.legend(fontsize=7, loc="best")
    ax_t.set_title("buffer ESS vs time")
    ax_n.set_title("buffer ESS vs energy evaluations")
    return _save(fig, path)


def _energy_range(u_samples, u_ref):
    # Reference quantiles set the window; samples may stretch it a little, but overlap outliers
    # (1e10 kT) must not.
    lo_r, hi_r = np.percentile(u_ref, [0.1, 99.9])
    width = hi_r - lo_r if hi_r > lo_r else 1.0
    lo_s, hi_s = (np.percentile(u_samples, [1, 99]) if u_samples.size else (lo_r, hi_r))
    lo = max(min(lo_r, lo_s), lo_r - width)
    hi = min(max(hi_r, hi_s), hi_r + width)
    return lo - 0.05 * width, hi + 0.05 * width


def plot_energy_histograms(u_samples, log_w, u_ref, path, bins: int = 80) -> Path:
    """Energy histograms of raw model samples, reweighted samples and the reference.

    Parameters
    ----------
    u_samples : ``[n]`` raw energies of the samples.
    log_w : ``[n]`` log importance weights (or None to skip the reweighted curve).
    u_ref : ``[m]`` reference energies.
    path : output image.

    The x-range follows the reference (0.1-99.9 percentiles), widened by at most one reference
    width to show where the samples sit; samples outside it are not drawn.
    """
    us, ur = _np(u_samples).ravel(), _np(u_ref).ravel()
    ur = ur[np.isfinite(ur)]
    keep = np.isfinite(us)
    lo, hi = _energy_range(us[keep], ur)
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(ur, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color="k", label="reference")
    ax.hist(us[keep], bins=edges, density=True, histtype="step", lw=1.5, label="samples (raw)")
    if log_w is not None:
        w = self_normalized_weights(_np(log_w).ravel())
        if w[keep].sum() > 0:
            ax.hist(us[keep], bins=edges, weights=w[keep], density=True, histtype="step", lw=1.5,
                    label="samples (reweighted)")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("reduced energy u [kT]")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


def plot_distance_histograms(x, log_w, x_ref, path, bins: int = 80) -> Path:
    """Pooled interatomic-distance histograms of samples (raw, reweighted) and reference.

    Parameters
    ----------
    x : ``[B, N, dim]`` samples.
    log_w : ``[B]`` log weights or None.
    x_ref : ``[M, N, dim]`` reference.
    path : output image.
    """
    d = interatomic_distances(x)
    d_ref = interatomic_distances(x_ref).ravel()
    hi = float(np.percentile(d_ref, 99.9)) * 1.2
    edges = np.linspace(0.0, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(d_ref, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color="k", label="reference")
    ax.hist(d.ravel(), bins=edges, density=True, histtype="step", lw=1.5, label="samples (raw)")
    if log_w is not None:
        w = self_normalized_weights(_np(log_w).ravel())
        if w.sum() > 0:
            ax.hist(d.ravel(), bins=edges, weights=np.repeat(w, d.shape[1]), density=True,
                    histtype="step", lw=1.5, label="samples (reweighted)")
    ax.set_xlabel("interatomic distance")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)
