"""Mode labels and mode populations, raw and reweighted, for molecules and particle systems.

A *label* is an integer per configuration naming its metastable state; populations are the fractions
of samples per label, raw and with self-normalized importance weights ``w ∝ exp(log w)``
(DESIGN.md, "Metrics"). Mass-covering training is judged by whether every mode is populated.

- Alanine dipeptide: the Ramachandran basins of :mod:`eqflow.evaluation.ramachandran` (β/C7eq, αR,
  αL, C7ax) and the halves phi > 0 / phi < 0. Fold D samples to L first
  (:func:`eqflow.evaluation.fold_to_l`): a reflection flips the sign of phi.
- Particle systems: the *contact graph* (pairs closer than a cutoff) up to permutation of the
  particles, read from its sorted degree sequence. For DW4 with the cutoff at the barrier of the pair
  double well, ``d0 = 4``, this separates all five local minima (found by minimizing from 2000 random
  starts; degree sequence: energy): (0,1,1,2): -25.79, (1,2,2,3): -25.31, (1,1,1,1): -24.35,
  (2,2,3,3): -23.47, (1,1,1,3): -21.07. For four particles the degree sequence identifies the graph
  up to isomorphism; for more it is a coarser but still permutation-invariant label.
"""
from __future__ import annotations

import numpy as np
import torch

from .metrics import self_normalized_weights
from .ramachandran import basin_masks

__all__ = ["mode_populations", "basin_labels", "alanine_mode_populations", "contact_graph_labels",
           "decode_contact_label", "dw4_mode_labels", "training_mode_populations", "ALA2_BASIN_NAMES",
           "DW4_MINIMA"]

ALA2_BASIN_NAMES = ("beta_C7eq", "alphaR", "alphaL", "C7ax")
# Degree sequence of DW4's contact graph (cutoff d0 = 4) -> energy of that local minimum (tau = 1).
DW4_MINIMA = {(0, 1, 1, 2): -25.79, (1, 2, 2, 3): -25.31, (1, 1, 1, 1): -24.35, (2, 2, 3, 3): -23.47,
              (1, 1, 1, 3): -21.07}


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def mode_populations(labels, log_w=None, modes=None) -> dict:
    """Fractions of samples per mode, raw and reweighted.

    Parameters
    ----------
    labels : ``[n]`` integer mode label per sample
    log_w : ``[n]`` importance log weights (``-u - log q``; ``-inf`` = weight 0), or None
    modes : the labels to report, in this order (default: the sorted labels present); modes absent
        from the samples get population 0, which is how a dropped mode shows

    Returns
    -------
    dict with ``modes`` ``[M]``, ``raw`` ``[M]`` (count fraction), ``reweighted`` ``[M]`` (sum of
    self-normalized weights; None without ``log_w``) and ``counts`` ``[M]``. Samples whose label is
    not in ``modes`` count in the denominator only.
    """
    labels = _np(labels).astype(np.int64).reshape(-1)
    modes = np.unique(labels) if modes is None else np.asarray(modes, dtype=np.int64)
    hit = labels[:, None] == modes[None, :]  # [n, M]
    n = labels.shape[0]
    counts = hit.sum(0)
    raw = counts / n if n else np.full(len(modes), np.nan)
    reweighted = None
    if log_w is not None:
        w = self_normalized_weights(log_w)
        if w.shape != labels.shape:
            raise ValueError(f"log_w must have shape {labels.shape}, got {w.shape}")
        reweighted = (w[:, None] * hit).sum(0)
    return dict(modes=modes, raw=raw, reweighted=reweighted, counts=counts)


def basin_labels(phi, psi) -> np.ndarray:
    """Index into :data:`ALA2_BASIN_NAMES` ``[B]`` of each ``(phi, psi)`` (radians)."""
    masks = basin_masks(phi, psi)
    labels = np.full(masks["phi>0"].shape, -1, dtype=np.int64)
    for i, name in enumerate(ALA2_BASIN_NAMES):
        labels[masks[name]] = i
    return labels


def alanine_mode_populations(phi, psi, log_w=None) -> dict[str, dict[str, float]]:
    """Populations of ``phi>0``, ``phi<0`` and the four basins: name -> ``{"raw", "reweighted"}``.

    ``phi``, ``psi`` ``[B]`` radians (L-folded samples); ``log_w`` ``[B]`` importance log weights or
    None (then ``reweighted`` is None). For bootstrap errors use
    :func:`eqflow.evaluation.ramachandran.mode_populations`.
    """
    out = {}
    half = mode_populations((_np(phi) > 0).astype(np.int64), log_w, modes=[1, 0])
    basins = mode_populations(basin_labels(phi, psi), log_w, modes=range(len(ALA2_BASIN_NAMES)))
    for pops, names in ((half, ("phi>0", "phi<0")), (basins, ALA2_BASIN_NAMES)):
        for i, name in enumerate(names):
            rw = pops["reweighted"]
            out[name] = dict(raw=float(pops["raw"][i]), reweighted=None if rw is None else float(rw[i]))
    return out


def contact_graph_labels(x, cutoff: float) -> np.ndarray:
    """Permutation- and E(n)-invariant label ``[B]`` of the graph of pairs with distance < ``cutoff``.

    The label encodes the sorted degree sequence ``(d_1 <= ... <= d_N)`` as the base-N integer
    ``Σ_i d_i N^(N-1-i)``, the same code in every sample set; :func:`decode_contact_label` inverts it.
    """
    x = torch.as_tensor(_np(x), dtype=torch.float64)
    n = x.shape[1]
    d = torch.cdist(x, x)
    contact = (d < cutoff) & ~torch.eye(n, dtype=torch.bool)
    deg = contact.sum(-1).sort(-1).values  # [B, N], each in [0, N-1]
    powers = n ** torch.arange(n - 1, -1, -1, dtype=torch.int64)
    return (deg * powers).sum(-1).numpy()


def decode_contact_label(label: int, n_atoms: int) -> tuple[int, ...]:
    """The sorted degree sequence encoded by :func:`contact_graph_labels`."""
    digits = []
    label = int(label)
    for _ in range(n_atoms):
        label, r = divmod(label, n_atoms)
        digits.append(r)
    return tuple(reversed(digits))


def dw4_mode_labels(x, d0: float = 4.0) -> np.ndarray:
    """DW4 metastable-state label ``[B]``: :func:`contact_graph_labels` with the cutoff at ``d0``.

    Decode with ``decode_contact_label(label, 4)``; the keys of :data:`DW4_MINIMA` are the states.
    """
    return contact_graph_labels(x, d0)


def _dw4_name(seq) -> str:
    return "".join(str(d) for d in seq)


def training_mode_populations(target, x, log_w=None, reflection_symmetric: bool = True) -> dict[str, float]:
    """Mode populations of a sample set as flat ``{"pop_raw/<mode>": ..., "pop_rw/<mode>": ...}``, for
    the training log (e.g. the replay buffer at each refresh); ``{}`` for systems without mode labels.

    - Molecules with ``target.dihedrals["phi"/"psi"]``: ``phi>0``, ``phi<0`` and the Ramachandran
      basins, after folding D samples to the reference enantiomer when ``reflection_symmetric`` and
      the target has chiral centres (folding changes no weight: ``log 2`` cancels in the normalization).
    - DW4 (4 particles in 2D, ``target.d0``): the five minima by their contact-graph degree sequence
      (e.g. ``pop_raw/0112``) and ``other``.
    - Anything else (LJ): ``{}``.

    ``x`` ``[B, N, dim]``; ``log_w`` ``[B]`` importance log weights or None (no ``pop_rw`` keys).
    The keys depend on the system only, so every rank of a distributed run logs the same ones.
    """
    out = {}
    dih = getattr(target, "dihedrals", None) or {}
    if "phi" in dih and "psi" in dih:
        from .ramachandran import phi_psi
        x = torch.as_tensor(x)
        centers, signs = getattr(target, "chiral_centers", None), getattr(target, "chiral_signs", None)
        if reflection_symmetric and centers and signs:
            from .chirality import fold_to_reference
            x, _, _ = fold_to_reference(x, None, centers, signs)
        phi, psi = phi_psi(x, phi=dih["phi"], psi=dih["psi"])
        for name, pops in alanine_mode_populations(phi, psi, log_w).items():
            out[f"pop_raw/{name}"] = pops["raw"]
            if pops["reweighted"] is not None:
                out[f"pop_rw/{name}"] = pops["reweighted"]
        return out
    if getattr(target, "n_atoms", None) == 4 and getattr(target, "dim", None) == 2 and hasattr(target, "d0"):
        labels = dw4_mode_labels(x, d0=float(target.d0))
        codes = [sum(d * 4 ** (3 - i) for i, d in enumerate(seq)) for seq in DW4_MINIMA]
        pops = mode_populations(labels, log_w, modes=codes)
        names = [_dw4_name(seq) for seq in DW4_MINIMA] + ["other"]
        raw = list(pops["raw"]) + [1.0 - float(np.sum(pops["raw"]))]
        rw = None if pops["reweighted"] is None else list(pops["reweighted"]) + [1.0 - float(np.sum(pops["reweighted"]))]
        for i, name in enumerate(names):
            out[f"pop_raw/{name}"] = float(raw[i])
            if rw is not None:
                out[f"pop_rw/{name}"] = float(rw[i])
    return out
