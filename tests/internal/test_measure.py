import math

import mdtraj
import pytest
import torch

from eqflow.distributions import CoMFreeGaussian
from eqflow.geometry import random_rotations, remove_mean
from eqflow.internal import LOG_SO3_VOLUME, ZMatrix, internal_to_v_log_density, log_det_v_to_internal
from eqflow.internal.zmatrix import orientation_angles
from eqflow.targets.molecular import alanine_dipeptide_pdb


def _com_free_basis(n_atoms: int) -> torch.Tensor:
    """Orthonormal basis ``[3N, 3N - 3]`` of V (atom-major flattening)."""
    # eigenvectors of the centring projector with eigenvalue 1 (eigh sorts the single 0 first)
    _, q = torch.linalg.eigh(torch.eye(n_atoms, dtype=torch.float64) - 1.0 / n_atoms)
    q = q[:, 1:].contiguous()
    return torch.kron(q, torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("system", ["chain4", "alanine"])
def test_log_det_of_v_to_orientation_and_internal(system):
    if system == "chain4":
        z = ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], root=(0, 1, 2))
        x = torch.tensor([[0.1, 0.0, 0.2], [1.0, 0.1, 0.0], [1.5, 1.0, 0.2], [2.4, 1.2, 0.9]], dtype=torch.float64)
    else:
        traj = mdtraj.load(alanine_dipeptide_pdb())
        z = ZMatrix.from_topology(traj.topology)
        x = torch.tensor(traj.xyz[0], dtype=torch.float64)
    n = z.n_atoms
    x = remove_mean(x @ random_rotations(1, generator=torch.Generator().manual_seed(2))[0].T)
    basis = _com_free_basis(n)
    assert torch.allclose(basis.T @ basis, torch.eye(3 * n - 3, dtype=torch.float64), atol=1e-12)
    v0 = basis.T @ x.reshape(-1)
    assert torch.allclose(basis @ v0, x.reshape(-1), atol=1e-12)

    def chart(v):  # V (orthonormal coordinates) -> (theta, phi, psi, ic)
        ic, _, rot = z((basis @ v).reshape(1, n, 3))
        return torch.cat([orientation_angles(rot)[0], ic[0]])

    jac = torch.autograd.functional.jacobian(chart, v0)
    _, logdet = torch.linalg.slogdet(jac)
    ic, _, rot = z(x[None])
    theta = orientation_angles(rot)[0, 0]
    # Haar density of the (theta, phi, psi) chart is sin(theta)
    expected = log_det_v_to_internal(z.log_volume(ic), n)[0] - torch.log(torch.sin(theta))
    assert torch.allclose(logdet, expected, atol=1e-8, rtol=0)


def _chain(n):
    return ZMatrix.from_bonds(n, [(i, i + 1) for i in range(n - 1)], root=(0, 1, 2))


def _gaussian_bond_vectors_ic_log_prob(z, ic, s):
    """IC density of independent bond vectors ``x_i - x_{i-1} ~ N(0, s² I)`` along a chain.

    Maxwell bonds, polar angles with density sin(a)/2, uniform torsions.
    """
    b, a, _ = z.split(ic)
    log_maxwell = 0.5 * math.log(2 / math.pi) + 2 * torch.log(b) - b ** 2 / (2 * s ** 2) - 3 * math.log(s)
    return log_maxwell.sum(-1) + torch.log(torch.sin(a) / 2).sum(-1) - z.n_torsions * math.log(2 * math.pi)


def _sample_ic_model(z, n, s, gen):
    """Cartesian samples on V of the IC model above with a uniform orientation (as ICFlow.sample does)."""
    y = s * torch.randn(n, z.n_atoms - 1, 3, generator=gen, dtype=torch.float64)
    chain = torch.cat([torch.zeros(n, 1, 3, dtype=torch.float64), y.cumsum(1)], 1)
    ic = z.internal(chain)  # exact IC samples of the model
    rot = random_rotations(n, generator=gen)
    return remove_mean(z.inverse(ic, rot=rot)), ic


@pytest.mark.parametrize("n_atoms", [3, 4])
def test_conversion_matches_closed_form(n_atoms):
    # In Cartesian terms this IC model is a Gaussian in the chain vectors y_i = x_i - x_{i-1}, a
    # unit-determinant linear map of the relative coordinates x_i - x_0, so on V (DESIGN.md):
    # log p_V = Σ log N(y_i; 0, s²I) + (3/2) log N. The conversion must reproduce it exactly.
    z, s = _chain(n_atoms), 0.8
    x = remove_mean(torch.randn(64, n_atoms, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    ic = z.internal(x)
    ours = internal_to_v_log_density(_gaussian_bond_vectors_ic_log_prob(z, ic, s), z.log_volume(ic), n_atoms)
    y = x[:, 1:] - x[:, :-1]
    exact = (-(y ** 2).sum((1, 2)) / (2 * s ** 2) - 1.5 * (n_atoms - 1) * math.log(2 * math.pi * s ** 2)
             + 1.5 * math.log(n_atoms))
    assert torch.allclose(ours, exact, atol=1e-10, rtol=0)


@pytest.mark.parametrize("n_atoms", [3, 4])
def test_converted_density_integrates_to_one_on_v(n_atoms):
    gen = torch.Generator().manual_seed(n_atoms)
    z, n = _chain(n_atoms), 200_000
    # E_g[p/g] = ∫_V p: the IC density converted to V is normalized (g: a normalized Gaussian on V,
    # wider than p in every direction so that the estimate has finite variance).
    g = CoMFreeGaussian(n_atoms, 3, scale=1.2).double()
    xg = g.sample(n, generator=gen)
    ic = z.internal(xg)
    log_p = internal_to_v_log_density(_gaussian_bond_vectors_ic_log_prob(z, ic, 1.0), z.log_volume(ic), n_atoms)
    w = torch.exp(log_p - g.log_prob(xg))
    mean, se = w.mean(), w.std() / math.sqrt(n)
    assert se < 0.01 and abs(mean - 1) < 5 * se
    # E_p[g/p] = ∫ g = 1: positions drawn from IC samples with a uniformly random orientation have
    # the converted density (the sampling path of ICFlow.sample).
    g = CoMFreeGaussian(n_atoms, 3, scale=1.0).double()
    xp, ic = _sample_ic_model(z, n, 1.5, gen)
    log_p = internal_to_v_log_density(_gaussian_bond_vectors_ic_log_prob(z, ic, 1.5), z.log_volume(ic), n_atoms)
    w = torch.exp(g.log_prob(xp) - log_p)
    mean, se = w.mean(), w.std() / math.sqrt(n)
    assert se < 0.01 and abs(mean - 1) < 5 * se


def test_so3_volume():
    assert LOG_SO3_VOLUME == pytest.approx(math.log(8 * math.pi ** 2))
    # the Haar density sin(theta) of the chart integrates to 8π² over [0, π] x [-π, π)²
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    assert torch.trapezoid(torch.sin(theta), theta) * (2 * math.pi) ** 2 == pytest.approx(8 * math.pi ** 2, rel=1e-8)
