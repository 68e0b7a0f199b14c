"""Ramachandran analysis of alanine dipeptide (or any backbone): angles, basins, ΔF, KL, plots.

Angles are in radians in ``(-pi, pi]``. Basins (degrees), a partition of the plane:

- ``beta_C7eq``: phi <= 0 and (psi >= 50 or psi < -120) (extended, C7eq, PII)
- ``alphaR``:    phi <= 0 and -120 <= psi < 50
- ``alphaL``:    phi > 0 and -40 <= psi < 120
- ``C7ax``:      phi > 0 and (psi < -40 or psi >= 120)

plus the halves ``phi>0`` and ``phi<0`` (phi <= 0; exactly 0 has measure zero).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["phi_psi", "basin_masks", "mode_populations", "delta_f", "ramachandran_kl",
           "plot_ramachandran", "BASINS", "ALA2_PHI", "ALA2_PSI"]

ALA2_PHI = (4, 6, 8, 14)
ALA2_PSI = (6, 8, 14, 16)
BASINS = ("phi>0", "phi<0", "beta_C7eq", "alphaR", "alphaL", "C7ax")


def _np(a):
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def phi_psi(x, topology=None, phi=ALA2_PHI, psi=ALA2_PSI) -> tuple[np.ndarray, np.ndarray]:
    """Backbone dihedrals ``(phi [B], psi [B])`` in radians via ``mdtraj.compute_dihedrals``.

    Parameters
    ----------
    x : tensor or array ``[B, N, 3]`` (nm; any length unit works for angles)
    topology : mdtraj.Topology, optional (only carried along; the indices decide)
    phi, psi : atom index 4-tuples (alanine dipeptide default, 0-based)
    """
    import mdtraj

    xyz = _np(x).astype(np.float32)
    traj = mdtraj.Trajectory(xyz, topology)
    ang = mdtraj.compute_dihedrals(traj, np.array([phi, psi]), periodic=False)
    return ang[:, 0].astype(np.float64), ang[:, 1].astype(np.float64)


def basin_masks(phi, psi) -> dict[str, np.ndarray]:
    """Boolean masks ``[B]`` of :data:`BASINS` (definitions in the module docstring)."""
    phi, psi = np.degrees(_np(phi)), np.degrees(_np(psi))
    pos = phi > 0
    ext = (psi >= 50) | (psi < -120)
    al = (psi >= -40) & (psi < 120)
    return {"phi>0": pos, "phi<0": ~pos, "beta_C7eq": ~pos & ext, "alphaR": ~pos & ~ext,
            "alphaL": pos & al, "C7ax": pos & ~al}


def _weights(w, n):
    if w is None:
        return np.ones(n)
    w = _np(w)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and non-negative (pass exp(log_w - max))")
    return w


def _bootstrap(stat, n, n_bootstrap, seed, block=1):
    # Moving-block bootstrap: for a correlated series (MD frames) resample contiguous blocks, so the
    # spread reflects the correlation time; block=1 is the ordinary (iid) bootstrap.
    rng = np.random.default_rng(seed)
    block = max(1, min(int(block), n))
    n_blocks = -(-n // block)
    offsets = np.arange(block)

    def draw():
        if block == 1:
            return rng.integers(0, n, n)
        starts = rng.integers(0, n - block + 1, n_blocks)
        return (starts[:, None] + offsets).ravel()[:n]

    return np.array([stat(draw()) for _ in range(n_bootstrap)])


def mode_populations(phi, psi, weights=None, n_bootstrap: int = 200, seed: int = 0, block: int = 1
                     ) -> dict[str, tuple[float, float]]:
    """Populations of the :data:`BASINS` with bootstrap standard deviations.

    Parameters
    ----------
    phi, psi : ``[B]`` radians
    weights : ``[B]`` non-negative importance weights (unnormalized) or None
    n_bootstrap : resamples of the B configurations (with their weights); 0 gives std = nan
    block : block length for correlated samples (MD frames in time order); 1 for independent samples

    Returns
    -------
    dict basin -> ``(population, std)``
    """
    masks = basin_masks(phi, psi)
    n = len(masks["phi>0"])
    w = _weights(weights, n)
    out = {}
    for name, m in masks.items():
        p = float(w[m].sum() / w.sum()) if n else float("nan")
        if n_bootstrap > 0 and n:
            bs = _bootstrap(lambda i: w[i][m[i]].sum() / max(w[i].sum(), 1e-300), n, n_bootstrap, seed,
                            block)
            std = float(bs.std(ddof=1))
        else:
            std = float("nan")
        out[name] = (p, std)
    return out


def delta_f(phi, weights=None, n_bootstrap: int = 200, seed: int = 0, block: int = 1
            ) -> tuple[float, float]:
    """``ΔF = -ln(P(phi > 0) / P(phi < 0))`` in kT with a bootstrap standard deviation.

    ``block`` > 1 resamples contiguous blocks (for time-ordered MD frames), see :func:`mode_populations`.

    Returns ``(inf, nan)`` when no (weighted) sample has phi > 0; bootstrap resamples with an empty
    half are left out of the std.
    """
    phi = _np(phi)
    n = len(phi)
    w = _weights(weights, n)
    pos = phi > 0

    def stat(i):
        a, b = w[i][pos[i]].sum(), w[i][~pos[i]].sum()
        return -math.log(a / b) if a > 0 and b > 0 else np.nan

    df = stat(np.arange(n))
    if not np.isfinite(df):
        return float("inf") if w[pos].sum() == 0 else float("-inf"), float("nan")
    if n_bootstrap <= 0:
        return float(df), float("nan")
    bs = _bootstrap(stat, n, n_bootstrap, seed, block)
    bs = bs[np.isfinite(bs)]
    return float(df), float(bs.std(ddof=1)) if len(bs) > 1 else float("nan")


def _hist2d(phi, psi, w, bins):
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    h, _, _ = np.histogram2d(phi, psi, bins=[edges, edges], weights=w)
    return h / h.sum()


def ramachandran_kl(phi, psi, weights, phi_ref, psi_ref, weights_ref=None, bins: int = 36,
                    eps: float = 1e-6) -> float:
    """``KL(ref || model)`` of 2D Ramachandran histograms (``bins x bins`` on ``[-pi, pi]^2``), in nats.

    The model histogram (normalized, weighted by ``weights`` if given) gets a pseudo-probability
    ``eps`` in every bin and is renormalized, so a bin the reference visits and the model misses costs
    a large but finite ``p ln(p / eps)`` instead of infinity. Bins empty in the reference contribute 0.
    """
    phi, psi, phi_ref, psi_ref = map(_np, (phi, psi, phi_ref, psi_ref))
    q = _hist2d(phi, psi, _weights(weights, len(phi)), bins)
    p = _hist2d(phi_ref, psi_ref, _weights(weights_ref, len(phi_ref)), bins)
    q = (q + eps) / (1.0 + eps * q.size)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def plot_ramachandran(panels: dict, path: str, bins: int = 60, title: str | None = None) -> str:
    """Side-by-side Ramachandran free-energy maps, one panel per entry, saved as PNG.

    Parameters
    ----------
    panels : dict name -> ``(phi, psi, weights or None)``, radians (e.g. "model", "model reweighted",
        "reference")
    path : output PNG
    bins : per axis

    Each panel shows ``-ln p`` (kT) shifted to 0 at its minimum, with the ``phi>0`` population in the
    title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False, constrained_layout=True)
    im = None
    for ax, (name, (phi, psi, w)) in zip(axes[0], panels.items()):
        phi, psi = _np(phi), _np(psi)
        w = _weights(w, len(phi))
        h = _hist2d(phi, psi, w, bins)
        with np.errstate(divide="ignore"):
            f = -np.log(h)
        f -= np.nanmin(f[np.isfinite(f)]) if np.isfinite(f).any() else 0.0
        im = ax.imshow(f.T, origin="lower", extent=[-180, 180, -180, 180], cmap="viridis",
                       vmin=0, vmax=10, aspect="equal")
        p_pos = w[phi > 0].sum() / w.sum() if len(w) else float("nan")
        ax.set_title(f"{name}\nP(phi>0) = {p_pos:.3f}, n = {len(phi)}")
        ax.set_xlabel("phi (deg)")
        ax.set_ylabel("psi (deg)")
        ax.set_xticks(range(-180, 181, 90))
        ax.set_yticks(range(-180, 181, 90))
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), label="free energy (kT)", shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
