"""Chirality folding for E(3)-equivariant flows on chiral molecules.

An E(3)-equivariant flow with an invariant base has ``q(x) = q(-x)``: it samples both enantiomers.
Alanine is L. Folding reflects the D samples (``x -> -x``); the folded density on the L half is
``2 q(x)``, so ``log q_L = log q + log 2`` (DESIGN.md). Reference data is L only.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..geometry import chirality_sign, reflect

__all__ = ["fold_to_l", "l_sign", "d_fraction", "fold_to_reference"]


@lru_cache(maxsize=None)
def _pdb_sign(pdb_path: str | None, center: int, neighbors: tuple[int, int, int]) -> float:
    from ..targets.molecular import alanine_dipeptide_pdb
    import mdtraj

    xyz = mdtraj.load_pdb(pdb_path or alanine_dipeptide_pdb()).xyz
    s = float(chirality_sign(torch.from_numpy(xyz).double(), center, neighbors)[0])
    if s == 0:
        raise ValueError(f"chiral centre {center} is planar in {pdb_path}")
    return s


def l_sign(pdb_path: str | None = None, center: int = 8, neighbors=(6, 14, 10)) -> float:
    """Chirality sign (±1, :func:`eqflow.geometry.chirality_sign`) of the L form, read from a PDB.

    Default: the alanine dipeptide PDB shipped with eqflow (L-alanine): +1 for CA (8) with N (6),
    C (14), CB (10).
    """
    return _pdb_sign(pdb_path, int(center), tuple(int(n) for n in neighbors))


def d_fraction(x: torch.Tensor, center: int = 8, neighbors=(6, 14, 10),
               reference_sign: float | None = None) -> float:
    """Fraction of configurations ``[B, N, 3]`` whose centre has the D (non-reference) handedness."""
    ref = l_sign(None, center, neighbors) if reference_sign is None else float(reference_sign)
    s = chirality_sign(x, center, tuple(neighbors))
    return float((s == -ref).double().mean()) if len(s) else 0.0


def fold_to_l(x: torch.Tensor, log_q: torch.Tensor | None = None, center: int = 8,
              neighbors=(6, 14, 10), reference_sign: float | None = None):
    """Reflect D configurations to L and correct the model log-density.

    Parameters
    ----------
    x : ``[B, N, 3]`` samples of a reflection-symmetric model (``q(x) = q(-x)``)
    log_q : ``[B]`` model log-density, or None
    center, neighbors : chiral atom and its three neighbours in a fixed order (alanine: 8; 6, 14, 10)
    reference_sign : sign of the L form; default from the shipped alanine PDB (:func:`l_sign`)

    Returns
    -------
    x_l : ``[B, N, 3]``: D samples reflected (``-x``; the CoM stays at 0), others unchanged
    log_q_l : ``[B]``: ``log_q + log 2`` (the density of the folded samples on the L half), or None
    frac_d : float, fraction of D samples before folding. Planar centres (sign 0) are left unchanged
        and count as neither.
    """
    ref = l_sign(None, center, neighbors) if reference_sign is None else float(reference_sign)
    s = chirality_sign(x, center, tuple(neighbors))
    is_d = s == -ref
    x_l = torch.where(is_d[:, None, None], reflect(x), x)
    log_q_l = None if log_q is None else log_q + math.log(2.0)
    frac_d = float(is_d.double().mean()) if len(s) else 0.0
    return x_l, log_q_l, frac_d


def fold_to_reference(x: torch.Tensor, log_q: torch.Tensor | None, chiral_centers, reference_signs):
    """Fold the samples of a reflection-symmetric model onto the reference enantiomer, for a molecule
    with any number of chiral centres (signs from the target's own structure, e.g.
    ``MolecularSystem.chiral_signs``).

    A configuration is reflected (``x -> -x``) when its first chiral centre has the mirror
    handedness: reflection flips every centre, so this splits V into two mirror halves and the folded
    density on the reference half is exactly ``2 q(x)`` (``log q + log 2``).

    Parameters
    ----------
    x : ``[B, N, 3]``; log_q : ``[B]`` or None
    chiral_centers : list of ``(center, (a, b, c))``; reference_signs : list of ±1, one per centre

    Returns
    -------
    x_f : ``[B, N, 3]``; log_q_f : ``[B]`` (``log_q + log 2``) or None
    stats : dict with ``d_fraction`` (fraction whose every centre had the mirror handedness before
        folding: the enantiomer) and ``stereo_mismatch_fraction`` (after folding, fraction with at
        least one centre unlike the reference: other stereoisomers, 0 for one centre)
    """
    if len(chiral_centers) != len(reference_signs) or not chiral_centers:
        raise ValueError("need one reference sign per chiral centre, and at least one centre")
    ref = torch.tensor([float(v) for v in reference_signs], dtype=x.dtype, device=x.device)
    signs = torch.stack([chirality_sign(x, c, tuple(nb)) for c, nb in chiral_centers], dim=-1)  # [B, K]
    flip = signs[:, 0] == -ref[0]
    x_f = torch.where(flip[:, None, None], reflect(x), x)
    folded = torch.where(flip[:, None], -signs, signs)
    stats = {"d_fraction": float((signs == -ref).all(-1).double().mean()) if len(x) else 0.0,
             "stereo_mismatch_fraction": float((folded != ref).any(-1).double().mean()) if len(x) else 0.0}
    return x_f, (None if log_q is None else log_q + math.log(2.0)), stats
