"""Z-matrix: Cartesian positions <-> (origin, orientation, bonds, angles, torsions), with its Jacobian.

Placement. Three root atoms ``(r0, r1, r2)`` (bonded r0-r1 and r1-r2) fix the frame: ``r0`` sits at the
origin, ``r1`` on the frame's first axis at distance ``b(r1, r0)``, ``r2`` in the frame's first quadrant
of the (e1, e2) plane at distance ``b(r2, r1)`` and angle ``a(r2, r1, r0)``. Every further atom ``i``
has a row ``(i, j, k, l)`` of atoms placed before it: bond ``|x_i - x_j|``, angle ``i-j-k``, torsion
``i-j-k-l`` (IUPAC sign, the same as mdtraj's; a torsion reads the same backwards).

Internal coordinates are one vector ``[batch, 3N - 6]`` laid out as
``bonds [N - 1] | angles [N - 2] | torsions [N - 3]``: bonds of r1, r2 then of the rows in order,
angles of r2 then of the rows, torsions of the rows (in ``[-pi, pi)``).

Volume element. In spherical coordinates about the atoms it is placed from, each atom contributes
``b² sin(a) db da dt``; ``r1`` contributes ``b1² db1 dΩ`` (dΩ its direction on S²) and ``r2``
``b2² sin(a2) db2 da2 dψ`` (ψ its azimuth about the r0-r1 axis). ``dΩ dψ`` is the Haar measure on
SO(3) with total mass ``8π²``, so

    d^{3N}x = d³x_{r0} · dμ_Haar(R) · J(ic) d(ic),    log J = Σ_bonds 2 log b + Σ_angles log sin a,

which :meth:`ZMatrix.log_volume` returns. :mod:`eqflow.internal.measure` turns this into a density
on the CoM-free subspace.
"""
from __future__ import annotations

import math

import torch

from ..geometry import check_positions

__all__ = ["ZMatrix", "bond_lengths", "bond_angles", "torsion_angles", "orientation_angles"]

# Below this length a difference vector counts as zero and its direction is replaced by a fallback;
# sin(angle) is clamped at the same size so log J stays finite for collinear geometries.
_EPS = 1e-12


def _norm(v: torch.Tensor) -> torch.Tensor:
    # sqrt of a clamped square: finite value *and* gradient at v = 0 (torch.norm's is NaN there).
    return (v * v).sum(-1).clamp_min(_EPS ** 2).sqrt()


def _safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # atan2(0, 0) is 0 but its gradient is 0/0; swap degenerate inputs for (0, 1) before the call
    # (double-where: the masked branch never sees the bad point, so no NaN flows back).
    bad = (x * x + y * y) < _EPS ** 2
    return torch.atan2(torch.where(bad, torch.zeros_like(y), y), torch.where(bad, torch.ones_like(x), x))


def _perpendicular(v: torch.Tensor) -> torch.Tensor:
    """Some unit vector perpendicular to ``v`` ``[..., 3]`` (for degenerate frames)."""
    ex, ey = _ex(v), _ex(v).roll(1, dims=-1)
    use_y = v[..., :1].abs() > v[..., 1:2].abs()
    p = torch.cross(v, torch.where(use_y, ey, ex), dim=-1)
    return p / _norm(p).unsqueeze(-1)


def _ex(v: torch.Tensor) -> torch.Tensor:
    """The unit x axis, shaped like ``v`` ``[..., 3]``."""
    e = torch.zeros_like(v)
    e[..., 0] = 1.0
    return e


def _unit(v: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``v / |v|``, or ``fallback`` where ``|v|`` vanishes."""
    n = (v * v).sum(-1, keepdim=True)
    bad = n < _EPS ** 2
    return torch.where(bad, fallback, v / n.clamp_min(_EPS ** 2).sqrt())


def bond_lengths(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``|x_i - x_j|`` for rows ``(i, j)`` of ``idx`` ``[m, 2]``: ``[B, N, 3] -> [B, m]``."""
    return _norm(x[:, idx[:, 0]] - x[:, idx[:, 1]])


def bond_angles(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Angle ``i-j-k`` in ``[0, pi]`` for rows ``(i, j, k)`` of ``idx`` ``[m, 3]``: ``[B, m]``.

    atan2(|u x v|, u . v) rather than acos: accurate near 0 and pi, and finite for zero-length bonds.
    """
    u = x[:, idx[:, 0]] - x[:, idx[:, 1]]
    v = x[:, idx[:, 2]] - x[:, idx[:, 1]]
    return _safe_atan2(_norm(torch.cross(u, v, dim=-1)), (u * v).sum(-1))


def torsion_angles(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Torsion ``i-j-k-l`` in ``[-pi, pi)`` for rows of ``idx`` ``[m, 4]``: ``[B, m]``.

    IUPAC/mdtraj sign. Undefined for collinear atoms; returns 0 there (finite, with finite gradient).
    """
    p0, p1, p2, p3 = (x[:, idx[:, c]] for c in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    y = _norm(b2) * (b1 * n2).sum(-1)
    t = _safe_atan2(y, (n1 * n2).sum(-1))
    # atan2 can return +pi; keep the half-open interval the circular splines use.
    return torch.where(t >= math.pi, t - 2 * math.pi, t)


def orientation_angles(rot: torch.Tensor) -> torch.Tensor:
    """Coordinates ``(theta, phi, psi)`` ``[B, 3]`` of rotations ``[B, 3, 3]`` with Haar density sin(theta).

    The first column ``e1 = (sin θ cos φ, sin θ sin φ, cos θ)``; ``psi`` is the angle of the second
    column about ``e1``, from ``u = ∂e1/∂θ`` towards ``e1 × u``. Then ``dμ = sin θ dθ dφ dψ`` (total 8π²).
    Used to test Jacobians with a concrete chart of SO(3).
    """
    e1, e2 = rot[..., :, 0], rot[..., :, 1]
    theta = _safe_atan2(_norm(e1[..., :2]), e1[..., 2])
    phi = _safe_atan2(e1[..., 1], e1[..., 0])
    u = torch.stack([torch.cos(theta) * torch.cos(phi), torch.cos(theta) * torch.sin(phi), -torch.sin(theta)], -1)
    w = torch.cross(e1, u, dim=-1)
    psi = _safe_atan2((e2 * w).sum(-1), (e2 * u).sum(-1))
    return torch.stack([theta, phi, psi], dim=-1)


class ZMatrix:
    """A Z-matrix over ``n_atoms`` atoms: root triple plus one ``(i, j, k, l)`` row per further atom.

    Parameters
    ----------
    n_atoms : int
    root : ``(r0, r1, r2)``
    rows : sequence of ``(i, j, k, l)`` (``n_atoms - 3`` of them), each using only atoms placed before.
    bonds : optional bond list; only used to mark improper torsions.

    Attributes
    ----------
    n_atoms, root, rows ``LongTensor [N - 3, 4]``, order (placement order, list of N atom indices),
    bond_idx ``[N - 1, 2]``, angle_idx ``[N - 2, 3]``, torsion_idx ``[N - 3, 4]``,
    n_bonds, n_angles, n_torsions, n_ic (= 3N - 6),
    improper (bool ``[N - 3]``: row's ``l`` is bonded to ``j``; all False when no bonds are given).
    """

    def __init__(self, n_atoms: int, root, rows, bonds=None):
        self.n_atoms = int(n_atoms)
        if self.n_atoms < 3:
            raise ValueError(f"a Z-matrix needs at least 3 atoms, got {n_atoms}")
        self.root = tuple(int(a) for a in root)
        rows = [tuple(int(a) for a in r) for r in rows]
        if len(rows) != self.n_atoms - 3:
            raise ValueError(f"need {self.n_atoms - 3} rows for {self.n_atoms} atoms, got {len(rows)}")
        placed = list(self.root)
        if len(set(placed)) != 3:
            raise ValueError(f"root atoms must differ, got {self.root}")
        for r in rows:
            i, refs = r[0], r[1:]
            if i in placed or len(set(r)) != 4 or any(a not in placed for a in refs):
                raise ValueError(f"row {r}: atom {i} must be new and placed from three distinct placed atoms")
            placed.append(i)
        if sorted(placed) != list(range(self.n_atoms)):
            raise ValueError("the Z-matrix must place every atom exactly once")
        self.order = placed
        self.rows = torch.tensor(rows, dtype=torch.long).reshape(-1, 4)
        r0, r1, r2 = self.root
        self.bond_idx = torch.cat([torch.tensor([[r1, r0], [r2, r1]]), self.rows[:, :2]])
        self.angle_idx = torch.cat([torch.tensor([[r2, r1, r0]]), self.rows[:, :3]])
        self.torsion_idx = self.rows.clone()
        self.n_bonds, self.n_angles, self.n_torsions = self.n_atoms - 1, self.n_atoms - 2, self.n_atoms - 3
        self.n_ic = 3 * self.n_atoms - 6
        bonded = {frozenset((int(a), int(b))) for a, b in (bonds or ())}
        self.improper = torch.tensor([frozenset((j, l)) in bonded for _, j, _, l in rows], dtype=torch.bool)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bonds(cls, n_atoms: int, bonds, root=None, torsions=(), heavy=None, prefer=()) -> "ZMatrix":
        """Spanning Z-matrix over a bond graph.

        Atoms are placed in order of (hydrogen last, then index) among those bonded to a placed atom,
        so heavy atoms and the backbone become the references. Each atom ``i`` is placed from its
        placed neighbour ``j`` (heavy first), ``k`` a placed neighbour of ``j`` and ``l`` a placed
        neighbour of ``k`` (else another placed neighbour of ``j``), each time
        preferring atoms in ``prefer``, then heavy atoms, then the earliest placed. Where ``j`` already
        has another placed heavy neighbour, that one is ``l`` (an improper torsion): branch atoms then
        get nearly rigid torsions that fix the handedness of ``j`` on their own.

        Parameters
        ----------
        n_atoms : int
        bonds : iterable of ``(a, b)`` (the graph must be connected)
        root : ``(r0, r1, r2)`` with r0-r1 and r1-r2 bonded; default: the heavy atom with most heavy
            neighbours in the middle, its two lowest-index heavy neighbours around it.
        torsions : 4-tuples that must appear as rows (either direction), e.g. phi and psi; each is
            used to place its end atom if the other three are placed by then.
        heavy : bool per atom (default: all heavy).
        prefer : atoms to use as references first (e.g. backbone N, CA, C).
        """
        n = int(n_atoms)
        bonds = [(int(a), int(b)) for a, b in bonds]
        nbr = [set() for _ in range(n)]
        for a, b in bonds:
            nbr[int(a)].add(int(b))
            nbr[int(b)].add(int(a))
        heavy = [True] * n if heavy is None else [bool(h) for h in heavy]
        prefer = set(int(a) for a in prefer)
        if root is None:
            center = max(range(n), key=lambda a: (sum(heavy[b] for b in nbr[a]), heavy[a], -a))
            ends = sorted(nbr[center], key=lambda b: (not heavy[b], b))
            if len(ends) < 2:
                raise ValueError("cannot choose a root: no atom with two bonded neighbours")
            root = (ends[0], center, ends[1])
        root = tuple(int(a) for a in root)
        if root[0] not in nbr[root[1]] or root[2] not in nbr[root[1]]:
            raise ValueError(f"root {root}: r0-r1 and r1-r2 must be bonded")
        wanted = []
        for t in torsions:
            t = tuple(int(a) for a in t)
            wanted += [t, t[::-1]]

        rank = {a: p for p, a in enumerate(root)}

        def key(a):  # reference preference: listed, heavy, earliest placed
            return (a not in prefer, not heavy[a], rank[a])

        rows = []
        while len(rank) < n:
            frontier = [a for a in range(n) if a not in rank and any(b in rank for b in nbr[a])]
            if not frontier:
                raise ValueError("the bond graph is not connected: cannot place "
                                 f"{sorted(a for a in range(n) if a not in rank)}")
            i = min(frontier, key=lambda a: (not heavy[a], a))
            row = next((t for t in wanted if t[0] == i and all(a in rank for a in t[1:])
                        and t[1] in nbr[i]), None)
            if row is None:
                j = min((b for b in nbr[i] if b in rank), key=key)
                ks = [b for b in nbr[j] if b in rank and b != i]
                if not ks:  # j is a leaf so far: fall back to any placed atom
                    ks = [b for b in rank if b != j]
                k = min(ks, key=key)
                # A heavy sibling on j first: an improper torsion i-j-k-l with l bonded to j is
                # nearly rigid and alone fixes the handedness at j (CB-CA-N-C for alanine's CA);
                # a proper torsion would tie it to the backbone torsion before it (phi).
                ls = [b for b in nbr[j] if b in rank and b not in (i, k) and heavy[b]]
                ls = ls or [b for b in nbr[k] if b in rank and b not in (i, j)]
                ls = ls or [b for b in nbr[j] if b in rank and b not in (i, k)]
                ls = ls or [b for b in rank if b not in (i, j, k)]
                row = (i, j, k, min(ls, key=key))
            rows.append(row)
            rank[i] = len(rank)
        return cls(n, root, rows, bonds=bonds)

    @classmethod
    def from_topology(cls, topology, root=None, torsions=None) -> "ZMatrix":
        """Backbone-first Z-matrix from an mdtraj topology.

        Root: N, CA, C of the first residue that has all three (alanine dipeptide: 6, 8, 14). Torsions:
        every backbone phi and psi mdtraj finds (alanine dipeptide: (4, 6, 8, 14), (6, 8, 14, 16)),
        unless given.
        """
        bonds = [(a.index, b.index) for a, b in topology.bonds]
        heavy = [a.element is None or a.element.symbol != "H" for a in topology.atoms]
        backbone = [a.index for a in topology.atoms if a.name in ("N", "CA", "C")]
        if root is None:
            for res in topology.residues:
                by_name = {a.name: a.index for a in res.atoms}
                if all(k in by_name for k in ("N", "CA", "C")):
                    root = (by_name["N"], by_name["CA"], by_name["C"])
                    break
        if torsions is None:
            torsions = _backbone_torsions(topology)
        return cls.from_bonds(topology.n_atoms, bonds, root=root, torsions=torsions, heavy=heavy,
                              prefer=backbone)

    # ------------------------------------------------------------------ Cartesian -> internal
    def frame(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Origin ``x[:, r0]`` ``[B, 3]`` and orientation ``R`` ``[B, 3, 3]`` (columns e1, e2, e3).

        ``e1`` points from r0 to r1, ``e2`` is the part of ``x[r2] - x[r1]`` perpendicular to ``e1``.
        Collinear roots get some perpendicular ``e2`` (R stays a rotation).
        """
        r0, r1, r2 = self.root
        e1 = _unit(x[:, r1] - x[:, r0], _ex(x[:, r0]))
        v = x[:, r2] - x[:, r1]
        e2 = _unit(v - (v * e1).sum(-1, keepdim=True) * e1, _perpendicular(e1))
        e3 = torch.cross(e1, e2, dim=-1)
        return x[:, r0], torch.stack([e1, e2, e3], dim=-1)

    def internal(self, x: torch.Tensor) -> torch.Tensor:
        """Internal coordinates ``[B, 3N - 6]`` (bonds | angles | torsions) of ``x`` ``[B, N, 3]``."""
        check_positions(x, n_atoms=self.n_atoms, dim=3)
        return torch.cat([bond_lengths(x, self.bond_idx), bond_angles(x, self.angle_idx),
                          torsion_angles(x, self.torsion_idx)], dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, N, 3] -> (ic [B, 3N - 6], origin [B, 3], R [B, 3, 3])``; :meth:`inverse` undoes it."""
        origin, rot = self.frame(x)
        return self.internal(x), origin, rot

    __call__ = forward

    def split(self, ic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ic [B, 3N - 6] -> (bonds [B, N - 1], angles [B, N - 2], torsions [B, N - 3])``."""
        return ic.split([self.n_bonds, self.n_angles, self.n_torsions], dim=-1)

    # ------------------------------------------------------------------ internal -> Cartesian
    def inverse(self, ic: torch.Tensor, origin: torch.Tensor | None = None,
                rot: torch.Tensor | None = None) -> torch.Tensor:
        """Positions ``[B, N, 3]`` from ``ic [B, 3N - 6]`` (NeRF, one atom at a time in placement order).

        Without ``origin``/``rot`` the result is in the canonical frame (r0 at 0, r1 on +x, r2 in the
        xy plane with y > 0). Collinear references (angle 0 or pi upstream) get a fallback frame, so the
        output is finite for any ic.
        """
        bonds, angles, torsions = self.split(ic)
        batch = ic.shape[0]
        zero = ic.new_zeros(batch)
        pos: dict[int, torch.Tensor] = {}
        r0, r1, r2 = self.root
        pos[r0] = ic.new_zeros(batch, 3)
        pos[r1] = torch.stack([bonds[:, 0], zero, zero], -1)
        a2 = angles[:, 0]
        pos[r2] = pos[r1] + bonds[:, 1:2] * torch.stack([-torch.cos(a2), torch.sin(a2), zero], -1)
        for m, (i, j, k, l) in enumerate(self.rows.tolist()):
            pos[i] = _place(pos[j], pos[k], pos[l], bonds[:, m + 2], angles[:, m + 1], torsions[:, m])
        x = torch.stack([pos[a] for a in range(self.n_atoms)], dim=1)
        if rot is not None:
            x = x @ rot.transpose(-1, -2)
        if origin is not None:
            x = x + origin.unsqueeze(1)
        return x

    # ------------------------------------------------------------------ volume
    def log_volume(self, ic: torch.Tensor) -> torch.Tensor:
        """``log J = Σ 2 log b + Σ log sin a`` ``[B]``: ``d^{3N}x = d³x_{r0} dμ_Haar(R) J d(ic)``.

        ``sin a`` is clamped at 1e-12 so collinear geometries give a large finite value, not -inf.
        """
        bonds, angles, _ = self.split(ic)
        return 2 * torch.log(bonds).sum(-1) + torch.log(torch.sin(angles).clamp_min(_EPS)).sum(-1)

    def __repr__(self) -> str:
        return f"ZMatrix(n_atoms={self.n_atoms}, root={self.root}, n_rows={len(self.rows)})"


def _place(xj, xk, xl, b, a, t):
    """NeRF (Parsons et al. 2005): atom at bond ``b`` from j, angle ``a`` (i-j-k), torsion ``t`` (i-j-k-l)."""
    bc = _unit(xj - xk, _ex(xj))
    n = _unit(torch.cross(xk - xl, bc, dim=-1), _perpendicular(bc))
    m = torch.cross(n, bc, dim=-1)
    d = torch.stack([-torch.cos(a), torch.sin(a) * torch.cos(t), torch.sin(a) * torch.sin(t)], -1)
    d = d * b.unsqueeze(-1)
    return xj + d[:, :1] * bc + d[:, 1:2] * m + d[:, 2:] * n


def _backbone_torsions(topology) -> list[tuple[int, int, int, int]]:
    """phi and psi atom quadruples of every residue that has them (indices only, no positions needed)."""
    import mdtraj
    import numpy as np

    traj = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    out = []
    for fn in (mdtraj.compute_phi, mdtraj.compute_psi):
        idx, _ = fn(traj)
        out += [tuple(int(a) for a in row) for row in idx]
    return out
