"""Internal-coordinate coupling flow with rational-quadratic splines (the comparison baseline).

Every internal coordinate is first mapped to ``[-pi, pi]``: bonds and angles affinely from a box
``[lower, upper]`` (outside it the density is zero), torsions as they are. The base is uniform on
``[-pi, pi]^D``. Coupling layers transform half of the features with monotonic rational-quadratic
splines whose parameters an MLP computes from the other half (torsions enter the MLP as cos, sin,
so the conditioner is periodic).

From zuko (no hand-written splines):

- :class:`zuko.transforms.MonotonicRQSTransform` with ``bound=pi``: the spline, its analytic inverse and
  log-derivative. It maps ``[-pi, pi]`` onto itself with slope 1 at both ends, so for a torsion it
  is a diffeomorphism of the circle (values and slopes agree at -pi and pi).
- :class:`zuko.transforms.CircularShiftTransform` with ``bound=pi`` (shift by pi modulo 2pi) before
  the spline on torsions, as in zuko's ``NCSF`` (Rezende et al. 2020): otherwise ±pi would be a fixed
  point of every layer.
- :class:`zuko.nn.MLP` for the conditioners.

zuko's own ``NSF``/``NCSF`` flows are not used as a whole because they treat all features alike:
here bonds and angles (intervals) and torsions (circle) share one coupling stack.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from zuko.nn import MLP
from zuko.transforms import CircularShiftTransform, MonotonicRQSTransform

from ..geometry import random_rotations, remove_mean, check_positions
from .measure import internal_to_v_log_density
from .zmatrix import ZMatrix

__all__ = ["ICFlow", "SplineCoupling"]

_PI = math.pi


class SplineCoupling(nn.Module):
    """One coupling layer on features in ``[-pi, pi]^D``.

    Parameters
    ----------
    mask : bool ``[D]``; True marks the conditioning half (left unchanged).
    circular : bool ``[D]``; True marks torsions.
    bins : spline bins K.
    hidden : hidden widths of the conditioner MLP.
    slope : minimum spline slope (zuko's ``slope``).
    """

    def __init__(self, mask: torch.Tensor, circular: torch.Tensor, bins: int = 8, hidden=(128, 128),
                 slope: float = 1e-3):
        super().__init__()
        mask, circular = torch.as_tensor(mask, dtype=torch.bool), torch.as_tensor(circular, dtype=torch.bool)
        idx_a, idx_b = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
        if len(idx_a) == 0 or len(idx_b) == 0:
            raise ValueError("the coupling mask must split the features into two non-empty halves")
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        self.register_buffer("circ_a", circular[idx_a], persistent=False)
        self.register_buffer("circ_b", circular[idx_b], persistent=False)
        self.bins, self.slope = int(bins), float(slope)
        n_in = len(idx_a) + int(circular[idx_a].sum())
        self.hyper = MLP(n_in, len(idx_b) * (3 * self.bins - 1), hidden_features=tuple(hidden),
                         activation=nn.SiLU)
        # Zero last layer: equal bins and unit knot slopes, i.e. the layer starts as the identity.
        nn.init.zeros_(self.hyper[-1].weight)
        nn.init.zeros_(self.hyper[-1].bias)
        self.shift = CircularShiftTransform(bound=_PI)

    def _spline(self, u_a: torch.Tensor) -> MonotonicRQSTransform:
        circ = u_a[:, self.circ_a]
        h = torch.cat([u_a[:, ~self.circ_a] / _PI, torch.cos(circ), torch.sin(circ)], dim=-1)
        phi = self.hyper(h).unflatten(-1, (len(self.idx_b), 3 * self.bins - 1))
        w, hgt, d = phi.split([self.bins, self.bins, self.bins - 1], dim=-1)
        return MonotonicRQSTransform(w, hgt, d, bound=_PI, slope=self.slope)

    def _merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=-1)[:, self.inv_perm]

    def _shift(self, u_b: torch.Tensor) -> torch.Tensor:
        # The shift is an involution on [-pi, pi): the same call undoes it.
        return torch.where(self.circ_b, self.shift(u_b), u_b)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> base direction: ``(v [B, D], log|det ∂v/∂u| [B])``."""
        u_a, u_b = u[:, self.idx_a], u[:, self.idx_b]
        v_b, ladj = self._spline(u_a).call_and_ladj(self._shift(u_b))
        return self._merge(u_a, v_b), ladj.sum(-1)

    def inverse(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base -> data direction: ``(u [B, D], log|det ∂u/∂v| [B])``."""
        v_a, v_b = v[:, self.idx_a], v[:, self.idx_b]
        spline = self._spline(v_a)
        s_b = spline.inv(v_b)
        _, ladj = spline.call_and_ladj(s_b)
        return self._merge(v_a, self._shift(s_b)), -ladj.sum(-1)


class ICFlow(nn.Module):
    """Coupling spline flow over a Z-matrix's internal coordinates, as a model on Cartesian positions.

    Follows DESIGN.md's model protocol: :meth:`sample` gives CoM-free positions with a uniformly random
    orientation and their log-density on V, :meth:`log_prob` scores positions ``[B, N, 3]``; the
    conversion between measures is :func:`~eqflow.internal.measure.internal_to_v_log_density`. The
    torsions fix the handedness, so the model makes one enantiomer (``reflection_symmetric = False``).

    Parameters
    ----------
    zmatrix : ZMatrix
    bond_lower, bond_upper : float or ``[N - 1]``; the box of the bond lengths.
    angle_lower, angle_upper : float or ``[N - 2]``; the box of the angles, within ``[0, pi]``.
    torsion_sign : optional ints ``[N - 3]`` in {-1, 0, 1}: 1 (-1) keeps that torsion in ``(0, pi)``
        (``(-pi, 0)``) as an interval feature, 0 leaves it on the circle. A chiral centre's improper
        torsion with a fixed sign makes the model produce one enantiomer only (:meth:`from_data`).
    n_layers : coupling layers (alternating complementary halves of seeded random masks).
    bins, hidden, slope : spline bins, conditioner widths, minimum spline slope.
    seed : seeds the masks.

    Attributes
    ----------
    zmatrix, n_atoms, dim (= 3), n_features (= 3N - 6), reflection_symmetric (False),
    lower, upper ``[3N - 6]`` (the box of every feature; ``(-pi, pi)`` for circular torsions),
    circular (bool ``[3N - 6]``)
    """

    reflection_symmetric = False

    def __init__(self, zmatrix: ZMatrix, bond_lower, bond_upper, angle_lower=0.0, angle_upper=_PI,
                 torsion_sign=None, n_layers: int = 4, bins: int = 8, hidden=(128, 128), slope: float = 1e-3,
                 seed: int = 0):
        super().__init__()
        self.zmatrix = zmatrix
        self.n_atoms, self.dim, self.n_features = zmatrix.n_atoms, 3, zmatrix.n_ic
        nb, na, nt = zmatrix.n_bonds, zmatrix.n_angles, zmatrix.n_torsions

        def full(v, n):
            return torch.as_tensor(v, dtype=torch.float64).expand(n)

        sign = torch.zeros(nt, dtype=torch.long) if torsion_sign is None else torch.as_tensor(torsion_sign).long()
        if sign.shape != (nt,) or not bool((sign.abs() <= 1).all()):
            raise ValueError(f"torsion_sign must hold {nt} values in {{-1, 0, 1}}")
        lower = torch.cat([full(bond_lower, nb), full(angle_lower, na),
                           torch.where(sign > 0, 0.0, -_PI).double()])
        upper = torch.cat([full(bond_upper, nb), full(angle_upper, na),
                           torch.where(sign < 0, 0.0, _PI).double()])
        if not bool((upper > lower).all()) or not bool((lower[:nb] >= 0).all()):
            raise ValueError("each box needs upper > lower and bond lengths >= 0")
        if not bool((lower[nb:nb + na] >= 0).all() and (upper[nb:nb + na] <= _PI + 1e-6).all()):
            raise ValueError("angle boxes must lie within [0, pi]")
        self.register_buffer("lower", lower.float())
        self.register_buffer("upper", upper.float())
        circular = torch.cat([torch.zeros(nb + na, dtype=torch.bool), sign == 0])
        self.register_buffer("circular", circular)
        gen = torch.Generator().manual_seed(int(seed))
        layers = []
        for i in range(int(n_layers)):
            if i % 2 == 0:
                mask = torch.randperm(self.n_features, generator=gen) < self.n_features // 2
            layers.append(SplineCoupling(mask if i % 2 == 0 else ~mask, circular, bins, hidden, slope))
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_data(cls, zmatrix: ZMatrix, x: torch.Tensor, n_std: float = 8.0, bond_rel_width: float = 0.15,
                  angle_width: float = 0.6, fix_chirality: bool = True, **kwargs) -> "ICFlow":
        """Boxes centred on the mean bonds and angles of ``x`` ``[n, N, 3]``.

        Half-widths ``max(n_std · std, bond_rel_width · mean)`` for bonds and ``max(n_std · std,
        angle_width)`` (radians) for angles, clipped to ``[0, pi]``; a single structure works too.
        With ``fix_chirality``, every improper torsion of ``zmatrix`` that keeps one sign in ``x`` with
        ``pi/6 < |t| < 5pi/6`` (a tetrahedral centre, not a planar one near ``pi``) is held to that
        sign, so the model makes the enantiomer of ``x`` only (alanine dipeptide: CB-CA-N-C and
        HA-CA-N-C fix L).
        """
        with torch.no_grad():
            ic = zmatrix.internal(check_positions(x, zmatrix.n_atoms, 3).double())
            nb, na = zmatrix.n_bonds, zmatrix.n_angles
            mean = ic[:, :nb + na].mean(0)
            std = ic[:, :nb + na].std(0) if len(ic) > 1 else torch.zeros_like(mean)
            half = torch.maximum(n_std * std, torch.cat([bond_rel_width * mean[:nb],
                                                          torch.full((na,), angle_width, dtype=mean.dtype)]))
            lo, hi = mean - half, mean + half
            lo = torch.cat([lo[:nb].clamp_min(0.0), lo[nb:].clamp(0.0, _PI)])
            hi = torch.cat([hi[:nb], hi[nb:].clamp(0.0, _PI)])
            t = ic[:, nb + na:]
            tetrahedral = ((t.abs() > _PI / 6) & (t.abs() < 5 * _PI / 6)).all(0)
            same_sign = (t.sign() == t[:1].sign()).all(0)
            chiral = zmatrix.improper & tetrahedral & same_sign
            mixed = zmatrix.improper & tetrahedral & ~same_sign
            if fix_chirality and bool(mixed.any()):
                rows = [tuple(r) for r in zmatrix.rows[mixed].tolist()]
                warnings.warn(f"improper torsions {rows} change sign within the data (both enantiomers?): "
                              "they stay circular, so the model can make both", stacklevel=2)
            sign = torch.where(chiral & fix_chirality, t[0].sign(), torch.zeros_like(t[0])).long()
        return cls(zmatrix, lo[:nb], hi[:nb], lo[nb:], hi[nb:], torsion_sign=sign, **kwargs)

    # ------------------------------------------------------------------ box <-> [-pi, pi]
    def _to_unit(self, ic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u [B, D], log|det ∂u/∂ic| [B], outside [B] bool)``.

        One affine map per boxed feature; circular torsions pass unchanged (their box ``(-pi, pi)``
        is only nominal: a float32 pi would otherwise rescale them by a hair).
        """
        lo, hi = self.lower.to(ic.dtype), self.upper.to(ic.dtype)
        u = torch.where(self.circular, ic, -_PI + 2 * _PI * (ic - lo) / (hi - lo))
        outside = (((ic < lo) | (ic > hi)) & ~self.circular).any(-1)
        ladj = torch.where(self.circular, 0.0, torch.log(2 * _PI / (hi - lo))).sum().expand(ic.shape[0])
        return u, ladj, outside

    def _from_unit(self, u: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lower.to(u.dtype), self.upper.to(u.dtype)
        return torch.where(self.circular, u, lo + (u + _PI) * (hi - lo) / (2 * _PI))

    def _base_log_prob(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_full((n,), -self.n_features * math.log(2 * _PI))

    # ------------------------------------------------------------------ densities on internal coordinates
    def log_prob_internal(self, ic: torch.Tensor) -> torch.Tensor:
        """``log p_IC(ic)`` ``[B]`` (Lebesgue in bonds, angles, torsions); -inf outside the box."""
        u, logdet, outside = self._to_unit(ic)
        for layer in self.layers:
            u, ladj = layer(u)
            logdet = logdet + ladj
        lp = self._base_log_prob(ic.shape[0], ic) + logdet
        return torch.where(outside, torch.full_like(lp, -math.inf), lp)

    def sample_internal(self, n: int, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ic [n, 3N - 6], log p_IC(ic) [n])``, reparameterized (differentiable in the parameters)."""
        dtype = dtype or self.lower.dtype
        u = (torch.rand(n, self.n_features, dtype=dtype, device=self.lower.device) * 2 - 1) * _PI
        log_p = self._base_log_prob(n, u)
        for layer in reversed(self.layers):
            u, ladj = layer.inverse(u)
            log_p = log_p - ladj
        ic = self._from_unit(u)
        _, ladj_box, _ = self._to_unit(ic)
        return ic, log_p + ladj_box

    # ------------------------------------------------------------------ model protocol (Cartesian, on V)
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` ``[B]`` on the CoM-free subspace V for positions ``x`` ``[B, N, 3]``.

        Only internal coordinates matter (the orientation density is uniform, the centre is removed),
        so ``x`` need not be centred.
        """
        check_positions(x, self.n_atoms, 3)
        ic = self.zmatrix.internal(x)
        return internal_to_v_log_density(self.log_prob_internal(ic), self.zmatrix.log_volume(ic), self.n_atoms)

    def sample(self, n: int, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, N, 3], log q(x) [n])``: CoM-free, uniformly random orientation, density on V."""
        ic, log_p_ic = self.sample_internal(n, dtype)
        rot = random_rotations(n, 3, dtype=ic.dtype, device=ic.device)
        x = remove_mean(self.zmatrix.inverse(ic, rot=rot))
        return x, internal_to_v_log_density(log_p_ic, self.zmatrix.log_volume(ic), self.n_atoms)

    def extra_repr(self) -> str:
        return f"n_atoms={self.n_atoms}, n_features={self.n_features}, n_layers={len(self.layers)}"
