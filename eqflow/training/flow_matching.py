"""Equivariant (conditional) flow matching: aligned base/data pairs and the regression loss.

Same time direction as :class:`~eqflow.flows.ContinuousFlow`: base at ``t = 0``, data at ``t = 1``.
A pair ``(x0, x1)`` (x0 from the base, x1 from data or the replay buffer, both CoM-free) is first
aligned: x1 is rotated onto x0 by the optimal *proper* rotation (Kabsch without reflection,
chirality is physical) and, for identical particles, optionally permuted (Hungarian assignment per
atom type). An equivariant field cannot tell x1 from its rotated or permuted copies, so alignment only
shortens and straightens the conditional paths (Klein et al. 2023, "Equivariant flow matching"). Then

    x_t = (1 - t)·x0 + t·x1 (+ σ_min·ξ, ξ CoM-free standard normal),   target velocity x1 - x0,

and the loss is ``|v(t, x_t) - (x1 - x0)|²`` summed over spatial coordinates, averaged over atoms, and
averaged over the batch (weighted when per-sample weights are given).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..flows import ContinuousFlow, MixtureFlow
from ..geometry import assert_com_free, check_positions, kabsch_rotation, remove_mean

__all__ = ["align_pairs", "hungarian_permutation", "draw_base", "flow_matching_path",
           "flow_matching_loss"]


def _groups(atom_types, n_atoms: int) -> list[np.ndarray]:
    if atom_types is None:
        return [np.arange(n_atoms)]
    types = torch.as_tensor(atom_types).detach().cpu().numpy().reshape(-1)
    if types.shape != (n_atoms,):
        raise ValueError(f"atom_types must have shape [{n_atoms}], got {types.shape}")
    return [np.flatnonzero(types == k) for k in np.unique(types)]


def _assign(cost: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Per-sample, per-type Hungarian assignment: ``perm [B, N]`` with ``x1[b, perm[b, i]] ↔ x0[b, i]``."""
    b, n, _ = cost.shape
    perm = np.empty((b, n), dtype=np.int64)
    # scipy's solver takes one matrix at a time: a loop over the batch (and the atom types) is forced.
    for s in range(b):
        for g in groups:
            rows, cols = linear_sum_assignment(cost[s][np.ix_(g, g)])
            perm[s, g[rows]] = g[cols]
    return perm


def hungarian_permutation(x0: torch.Tensor, x1: torch.Tensor, atom_types=None) -> torch.Tensor:
    """Permutation ``perm`` ``[B, N]`` (long) minimizing ``Σ_i |x0_i - x1_perm(i)|²`` within atom types.

    ``x1.gather`` with it (or :func:`align_pairs`) reorders x1's atoms onto x0's. ``atom_types``
    ``[N]``: only atoms of the same type are exchanged (None: all atoms identical).
    """
    cost = torch.cdist(x0.detach().double(), x1.detach().double()).pow(2).cpu().numpy()
    perm = _assign(cost, _groups(atom_types, x0.shape[1]))
    return torch.as_tensor(perm, device=x0.device)


def _permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return x.gather(1, perm[..., None].expand_as(x))


def _rotate_onto(x1: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    # The rotation is a constant of the pair: no gradient through the SVD, which is unstable where
    # singular values coincide. Proper rotations only.
    with torch.no_grad():
        rot = kabsch_rotation(x1, x0)
    return remove_mean(x1) @ rot.transpose(-1, -2)


def _proper_frame(x: torch.Tensor) -> torch.Tensor:
    """Principal axes ``[B, dim, dim]`` (columns) of CoM-free ``x``, made a proper rotation."""
    e = torch.linalg.eigh(x.transpose(-1, -2) @ x).eigenvectors
    flip = torch.ones(e.shape[0], e.shape[-1], dtype=e.dtype, device=e.device)
    flip[:, -1] = torch.where(torch.linalg.det(e) < 0, -1.0, 1.0).to(e.dtype)
    return e * flip[:, None, :]


def _starts(x0: torch.Tensor, x1: torch.Tensor, groups) -> torch.Tensor:
    """Initial guesses ``[S, B, N, dim]`` for the alternation, each independent of x1's orientation
    and atom order: the fingerprint match (rotated by Kabsch) and x1 turned so that its principal axes
    lie on x0's (every proper choice of axis signs; atoms still in x1's order)."""
    with torch.no_grad():
        f0 = torch.cdist(x0.double(), x0.double()).sort(-1).values
        f1 = torch.cdist(x1.double(), x1.double()).sort(-1).values
        perm = torch.as_tensor(_assign(torch.cdist(f0, f1).pow(2).cpu().numpy(), groups), device=x1.device)
    starts = [_rotate_onto(_permute(x1, perm), x0)]
    # Principal axes (eigenvectors of the gyration tensor): permutation invariant, rotation covariant.
    # Their signs are arbitrary, so try every sign pattern that keeps the map proper.
    e0, e1 = _proper_frame(x0), _proper_frame(x1)
    dim = x0.shape[-1]
    signs = torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=x0.dtype, device=x0.device)] * dim)
    for sign in signs.reshape(-1, dim):
        if sign.prod() > 0:
            starts.append(x1 @ (e1 * sign) @ e0.transpose(-1, -2))
    return torch.stack(starts)


def align_pairs(x0: torch.Tensor, x1: torch.Tensor, permute: bool = False, atom_types=None,
                n_iter: int = 3) -> torch.Tensor:
    """x1 rotated (and optionally permuted) onto x0: ``[B, N, dim]``, CoM-free.

    Parameters
    ----------
    x0 : ``[B, N, dim]`` base samples (the reference of the alignment)
    x1 : ``[B, N, dim]`` data samples; any translation is removed
    permute : also reorder x1's atoms (identical particles) by Hungarian assignment
    atom_types : ``[N]`` ints; with ``permute`` only atoms of equal type are exchanged (None: all)
    n_iter : rounds of (Hungarian on coordinates, then Kabsch) from each initial guess

    Without ``permute`` this is Kabsch: the proper rotation minimizing the RMSD to x0. With it, the
    joint problem over rotations and permutations is solved by alternation, each step lowering the
    squared distance to x0, from several initial guesses, keeping the best per pair. The guesses are
    (a) an assignment from rotation-invariant fingerprints (each atom's sorted distances to all atoms)
    followed by Kabsch and (b) x1 turned so that its principal axes lie on x0's, for every proper
    choice of axis signs (4 in 3D, 2 in 2D). Each is then refined ``n_iter`` times by a Hungarian
    assignment on the squared distances and Kabsch, stopping early once no assignment changes. The
    guesses do not depend on x1's orientation or atom order, so neither does the result (up to ties,
    e.g. degenerate principal axes). It is a good local optimum, not always the global one.
    """
    check_positions(x0, name="x0")
    check_positions(x1, x0.shape[1], x0.shape[2], name="x1")
    if not permute:
        return _rotate_onto(x1, x0)
    groups = _groups(atom_types, x0.shape[1])
    x0, x1 = remove_mean(x0), remove_mean(x1)
    starts = _starts(x0, x1, groups)
    s, (b, n, d) = starts.shape[0], x1.shape
    ref = x0.repeat(s, 1, 1)
    cur = starts.reshape(s * b, n, d)
    identity = torch.arange(n, device=x1.device)
    for _ in range(n_iter):
        step = hungarian_permutation(ref, cur, atom_types)
        if bool((step == identity).all()):
            break
        cur = _rotate_onto(_permute(cur, step), ref)
    cost = (cur - ref).pow(2).sum((-1, -2)).view(s, b)
    return cur.view(s, b, n, d)[cost.argmin(0), torch.arange(b, device=x1.device)]


def draw_base(flow: ContinuousFlow, n: int, generator: torch.Generator | None = None):
    """``(x0 [n, N, dim], components [n] or None)`` from the flow's base.

    A :class:`~eqflow.flows.MixtureFlow` base gives each sample's component (``k ~ π``), which
    :func:`flow_matching_loss` needs to condition the field; a plain flow gives None. The samples are
    detached (no gradient to the base).
    """
    # Detached: flow matching trains the field; the base's parameters get no gradient from the pairs.
    with torch.no_grad():
        if isinstance(flow, MixtureFlow):
            return flow.base.sample(n, generator)
        return flow.base.sample(n, generator), None


def flow_matching_path(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma_min: float = 0.0,
                       generator: torch.Generator | None = None):
    """``(x_t, u)``: the point ``(1-t)·x0 + t·x1 + σ_min·ξ`` ``[B, N, dim]`` and the target ``x1 - x0``.

    ``t`` is ``[B]``; ``ξ`` is a CoM-free standard normal, so ``x_t`` stays on V.
    """
    tt = t.to(x0.dtype)[:, None, None]
    xt = (1 - tt) * x0 + tt * x1
    if sigma_min > 0:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xt = xt + sigma_min * remove_mean(noise)
    return xt, x1 - x0


def flow_matching_loss(model, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | None = None,
                       components: torch.Tensor | None = None, sigma_min: float = 0.0,
                       weights: torch.Tensor | None = None, h: torch.Tensor | None = None,
                       generator: torch.Generator | None = None):
    """Conditional flow-matching loss of the pairs ``(x0, x1)`` (align them first: :func:`align_pairs`).

    Parameters
    ----------
    model : a :class:`~eqflow.flows.ContinuousFlow` (its field, with its atom features), a
        :class:`~eqflow.flows.MixtureFlow` (its field with atom features and the one-hot of
        ``components``), or a bare field ``v(t [B], x [B, N, dim], h) -> [B, N, dim]`` called with ``h``
    x0 : ``[B, N, dim]`` CoM-free base samples (``t = 0``)
    x1 : ``[B, N, dim]`` CoM-free data samples (``t = 1``)
    t : ``[B]`` times; None draws ``t ~ U[0, 1)`` (with ``generator``)
    components : ``[B]`` long, the mixture component each x0 was drawn from (MixtureFlow only)
    sigma_min : std of the CoM-free Gaussian noise added to the path
    weights : ``[B]`` non-negative per-sample weights, normalized here (e.g. self-normalized
        importance weights); None weighs all samples equally
    h : node features for a bare field (ignored for flows)

    Returns
    -------
    loss : scalar, ``Σ_b w_b ℓ_b / Σ_b w_b`` with ``ℓ_b = (1/N) Σ_i Σ_d (v - (x1 - x0))²_{b,i,d}``
    stats : dict with ``fm`` (float, the loss)
    """
    check_positions(x0, name="x0")
    check_positions(x1, x0.shape[1], x0.shape[2], name="x1")
    assert_com_free(x0, "x0")
    assert_com_free(x1, "x1")
    b = x0.shape[0]
    if t is None:
        t = torch.rand(b, generator=generator, dtype=x0.dtype, device=x0.device)
    if t.shape != (b,):
        raise ValueError(f"t must have shape [{b}], got {tuple(t.shape)}")
    xt, target = flow_matching_path(x0, x1, t, sigma_min, generator)
    t = t.to(x0.dtype)
    if isinstance(model, MixtureFlow):
        if components is None:
            raise ValueError("a MixtureFlow needs the component index of every x0 (see draw_base)")
        v = model.field(t, xt, model._node_features(b, model._onehot(components, x0.dtype)))
    elif isinstance(model, ContinuousFlow):
        v = model.field(t, xt, model._node_features(b))
    else:
        v = model(t, xt, h)
    per_sample = (v - target).pow(2).sum(-1).mean(-1)
    if weights is None:
        loss = per_sample.mean()
    else:
        weights = weights.to(per_sample.dtype)
        if weights.shape != (b,):
            raise ValueError(f"weights must have shape [{b}], got {tuple(weights.shape)}")
        loss = (weights * per_sample).sum() / weights.sum()
    return loss, dict(fm=float(loss.detach()))
