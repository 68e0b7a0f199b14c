import math

import mdtraj
import numpy as np
import pytest
import torch

from eqflow.geometry import kabsch_align, random_rotations
from eqflow.internal import ZMatrix
from eqflow.internal.zmatrix import bond_angles, orientation_angles, torsion_angles
from eqflow.targets.molecular import ALA2_PHI, ALA2_PSI, alanine_dipeptide_pdb


@pytest.fixture(scope="module")
def ala():
    traj = mdtraj.load(alanine_dipeptide_pdb())
    return traj, ZMatrix.from_topology(traj.topology)


def _conformations(traj, n=8, noise=0.01, seed=0):
    """The PDB structure and ``n`` perturbed, rotated, translated copies, float64 ``[n + 1, 22, 3]``."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.tensor(traj.xyz[0], dtype=torch.float64)
    x = x0 + noise * torch.randn(n, *x0.shape, generator=gen, dtype=torch.float64)
    x = x @ random_rotations(n, generator=gen).transpose(1, 2) + torch.randn(n, 1, 3, generator=gen,
                                                                              dtype=torch.float64)
    return torch.cat([x0[None], x])


def test_alanine_zmatrix_is_backbone_first(ala):
    traj, z = ala
    top = traj.topology
    assert z.root == (6, 8, 14)  # N, CA, C of ALA
    rows = [tuple(r) for r in z.rows.tolist()]
    assert ALA2_PHI in rows or ALA2_PHI[::-1] in rows
    assert ALA2_PSI in rows or ALA2_PSI[::-1] in rows
    bonded = {frozenset((a.index, b.index)) for a, b in top.bonds}
    heavy = [a.element.symbol != "H" for a in top.atoms]
    for i, j, k, l in rows:
        assert frozenset((i, j)) in bonded
        assert heavy[j] and heavy[k] and heavy[l]  # hydrogens are never references here
    n_heavy = sum(heavy)
    assert all(heavy[a] for a in z.order[:n_heavy])  # heavy atoms first
    assert sorted(z.order) == list(range(22))


def test_torsions_match_mdtraj(ala):
    traj, z = ala
    x = torch.tensor(traj.xyz, dtype=torch.float64)
    idx = torch.tensor([ALA2_PHI, ALA2_PSI])
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    ours = torsion_angles(x, idx)[0]
    assert np.allclose(ours.numpy(), [phi[0, 0], psi[0, 0]], atol=1e-5)  # mdtraj works in float32
    # A torsion reads the same backwards, so the Z-matrix's psi row gives mdtraj's psi.
    assert torch.allclose(torsion_angles(x, idx.flip(1)), torsion_angles(x, idx), atol=1e-12)


def test_round_trip_alanine_float64(ala):
    traj, z = ala
    x = _conformations(traj)
    ic, origin, rot = z(x)
    assert ic.shape == (9, 60)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(9, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(9, dtype=torch.float64), atol=1e-12)
    assert (z.inverse(ic, origin, rot) - x).abs().max() < 1e-10
    # Without the frame the structure comes back in the canonical frame: equal after a proper
    # rotation and a translation (chirality kept).
    canon = z.inverse(ic)
    assert (kabsch_align(canon, x) - x).abs().max() < 1e-10
    r0, r1, r2 = z.root
    assert canon[:, r0].abs().max() < 1e-14 and canon[:, r1, 1:].abs().max() < 1e-14
    assert canon[:, r2, 2].abs().max() < 1e-14 and (canon[:, r2, 1] > 0).all()
    # and the internal coordinates of the reconstruction are the same
    assert (z.internal(canon) - ic).abs().max() < 1e-10


def test_round_trip_float32(ala):
    traj, z = ala
    x = _conformations(traj).float()
    ic, origin, rot = z(x)
    assert ic.dtype == torch.float32
    assert (z.inverse(ic, origin, rot) - x).abs().max() < 1e-5


def _small_molecule():
    # 5 atoms: chain 0-1-2-3 with a branch 4 on 1 (an improper-style row).
    z = ZMatrix.from_bonds(5, [(0, 1), (1, 2), (2, 3), (1, 4)], root=(0, 1, 2))
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.1, 0.0], [1.5, 1.0, 0.2], [2.4, 1.2, 0.9], [1.2, -0.6, 0.8]],
                     dtype=torch.float64)
    return z, x


def _full_chart(z):
    def f(flat):
        x = flat.reshape(1, z.n_atoms, 3)
        ic, origin, rot = z(x)
        return torch.cat([origin[0], orientation_angles(rot)[0], ic[0]])
    return f


@pytest.mark.parametrize("system", ["small", "alanine"])
def test_log_det_against_autograd(system, ala):
    if system == "small":
        z, x = _small_molecule()
    else:
        traj, z = ala
        x = _conformations(traj, n=1, seed=3)[1]
    # Rotate so the orientation chart is away from its poles.
    x = x @ random_rotations(1, generator=torch.Generator().manual_seed(1))[0].T
    jac = torch.autograd.functional.jacobian(_full_chart(z), x.reshape(-1))
    assert jac.shape == (3 * z.n_atoms, 3 * z.n_atoms)
    _, logdet = torch.linalg.slogdet(jac)
    ic, _, rot = z(x[None])
    theta = orientation_angles(rot)[0, 0]
    # d^{3N}x = d³x0 · sinθ dθ dφ dψ · J d(ic)  =>  log|det ∂(x0, θ, φ, ψ, ic)/∂x| = -log J - log sin θ
    expected = -z.log_volume(ic)[0] - torch.log(torch.sin(theta))
    assert torch.allclose(logdet, expected, atol=1e-8, rtol=0)


def test_orientation_angles_round_trip():
    rot = random_rotations(50, generator=torch.Generator().manual_seed(0))
    t, p, s = orientation_angles(rot).unbind(-1)
    e1 = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1)
    u = torch.stack([t.cos() * p.cos(), t.cos() * p.sin(), -t.sin()], -1)
    w = torch.cross(e1, u, dim=-1)
    e2 = s.cos()[:, None] * u + s.sin()[:, None] * w
    assert torch.allclose(e1, rot[:, :, 0], atol=1e-12) and torch.allclose(e2, rot[:, :, 1], atol=1e-12)


def test_collinear_geometry_is_finite():
    z = ZMatrix.from_bonds(5, [(0, 1), (1, 2), (2, 3), (3, 4)], root=(0, 1, 2))
    # all five atoms on a line (angles pi, torsions undefined), and one with a zero-length bond
    line = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]],
                         [[0.0, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0], [2, 1, 1]]],
                        dtype=torch.float64, requires_grad=True)
    ic, origin, rot = z(line)
    assert torch.isfinite(ic).all() and torch.isfinite(rot).all()
    assert torch.allclose(torch.linalg.det(rot), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ic[0, 4:7], torch.full((3,), math.pi, dtype=torch.float64))
    logj = z.log_volume(ic)
    assert torch.isfinite(logj).all()
    (ic.sum() + logj.sum()).backward()
    assert torch.isfinite(line.grad).all()
    # The inverse is defined for angles 0 and pi (any torsion): bonds and angles are reproduced.
    bonds = torch.tensor([[1.0, 1.2, 0.9, 1.1]] * 2, dtype=torch.float64)
    angles = torch.tensor([[math.pi, math.pi, math.pi], [0.0, math.pi, 0.0]], dtype=torch.float64)
    torsions = torch.tensor([[0.3, -2.0], [1.0, 2.5]], dtype=torch.float64)
    x = z.inverse(torch.cat([bonds, angles, torsions], -1))
    assert torch.isfinite(x).all()
    ic2 = z.internal(x)
    assert torch.allclose(ic2[:, :7], torch.cat([bonds, angles], -1), atol=1e-6)


def test_invalid_zmatrix_is_rejected():
    with pytest.raises(ValueError, match="placed"):
        ZMatrix(4, (0, 1, 2), [(3, 1, 2, 4)])
    with pytest.raises(ValueError, match="not connected"):
        ZMatrix.from_bonds(5, [(0, 1), (1, 2), (2, 3)], root=(0, 1, 2))
    with pytest.raises(ValueError, match="bonded"):
        ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], root=(0, 2, 1))


def test_angles_near_zero_and_pi_are_accurate():
    # atan2 form: no acos blow-up right at the ends
    x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [1, 1e-9, 0]], [[1.0, 0, 0], [0, 0, 0], [-1, 1e-9, 0]]],
                     dtype=torch.float64)
    a = bond_angles(x, torch.tensor([[0, 1, 2]]))
    assert torch.allclose(a[:, 0], torch.tensor([1e-9, math.pi - 1e-9], dtype=torch.float64), rtol=1e-6, atol=0)


def test_default_root_and_hydrogens_last():
    # isobutanol-like heavy skeleton C0-C1(-C2)-C3-O4 with hydrogens 5 (on O4) and 6 (on C0)
    bonds = [(0, 1), (1, 2), (1, 3), (3, 4), (4, 5), (0, 6)]
    heavy = [True] * 5 + [False] * 2
    z = ZMatrix.from_bonds(7, bonds, heavy=heavy)
    assert z.root == (0, 1, 2)  # C1 has the most heavy neighbours; its two lowest-index ones around it
    assert z.order[-2:] == [5, 6]
    x = torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (z.inverse(*z(x)) - x).abs().max() < 1e-10
