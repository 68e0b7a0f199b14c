"""OpenMMEnergy: energies and forces against a bare OpenMM Context, autograd, workers, bad inputs."""
import subprocess
import sys

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from eqflow.targets.molecular import alanine_dipeptide
from eqflow.targets.openmm_bridge import OpenMMEnergy, kT_kj_per_mol


@pytest.fixture(scope="module", params=["vacuum", "implicit"])
def mol(request):
    m = alanine_dipeptide(request.param, platform="Reference")
    yield m
    m.close()


def _perturbed(mol, n=5, scale=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = mol.positions[None].repeat(n, 1, 1)
    x = x0 + scale * torch.randn(x0.shape, dtype=torch.float64, generator=g)
    x[0] = mol.positions  # the PDB geometry itself
    return x


def _openmm_reference(mol, x):
    ctx = openmm.Context(mol.system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    e, f = [], []
    for xi in x.numpy():
        ctx.setPositions(xi)
        s = ctx.getState(getEnergy=True, getForces=True)
        e.append(s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        f.append(s.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(e), np.array(f)


def test_energy_and_gradient_match_openmm(mol):
    x = _perturbed(mol).requires_grad_(True)
    u = mol.energy(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    e_ref, f_ref = _openmm_reference(mol, x.detach())
    kt = kT_kj_per_mol(300.0)
    np.testing.assert_allclose(u.detach().numpy(), e_ref / kt, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(g.numpy(), -f_ref / kt, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(mol.energy.force(x.detach()).numpy(), f_ref / kt, rtol=1e-10, atol=1e-8)
    assert mol.energy.n_nonfinite == 0


def test_dtype_and_shape(mol):
    x = _perturbed(mol, n=3).float()
    u = mol.energy(x)
    assert u.shape == (3,) and u.dtype == torch.float32
    with pytest.raises(ValueError, match="atoms"):
        mol.energy(torch.zeros(2, 5, 3))
    assert mol.energy(torch.zeros(0, 22, 3)).shape == (0,)


def test_gradcheck_float64(mol):
    base = _perturbed(mol, n=2, seed=1)[1:2]
    atoms = [6, 8, 10, 14]

    def f(sub):
        x = base.clone()
        x[0, atoms] = sub
        return mol.energy(x)

    sub = base[0, atoms].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (sub,), eps=1e-6, atol=1e-5, rtol=1e-5)


def test_nan_and_overlap_give_inf_and_count():
    m = alanine_dipeptide("vacuum", platform="Reference")
    e = m.energy
    x = m.positions[None].repeat(3, 1, 1).clone()
    x[1, 3] = float("nan")
    x[2, 21] = x[2, 0]  # two non-bonded atoms on top of each other
    x.requires_grad_(True)
    u = e(x)
    assert torch.isfinite(u[0])
    assert torch.isinf(u[1]) and u[1] > 0
    assert torch.isinf(u[2]) and u[2] > 0
    assert e.n_nonfinite == 2 and e.n_evaluations == 3
    # Unevaluable rows get zero gradient, never NaN.
    (g,) = torch.autograd.grad(u, x, grad_outputs=torch.ones_like(u))
    assert torch.isfinite(g).all() and (g[1:] == 0).all() and (g[0] != 0).any()


def test_two_workers_match_single_process():
    m = alanine_dipeptide("implicit", platform="Reference")
    x = _perturbed(m, n=7, seed=3)
    u1, f1 = m.energy.energy_and_force(x)
    with OpenMMEnergy(m.system, 300.0, n_workers=2, platform="Reference") as e2:
        xg = x.clone().requires_grad_(True)
        u2 = e2(xg)
        (g2,) = torch.autograd.grad(u2.sum(), xg)
        bad = x.clone()
        bad[4, 0] = float("inf")
        assert torch.isinf(e2(bad)[4]) and e2.n_nonfinite == 1
    assert e2._pool is None
    np.testing.assert_array_equal(u1.numpy(), u2.detach().numpy())
    np.testing.assert_array_equal(-f1.numpy(), g2.numpy())


def test_process_with_workers_exits_promptly():
    # No close(): the atexit hook must stop the workers and the interpreter must not hang.
    code = (
        "import torch\n"
        "from eqflow.targets.molecular import alanine_dipeptide\n"
        "m = alanine_dipeptide('vacuum', n_workers=2)\n"
        "e = m.energy\n"
        "print(float(e(m.positions[None].repeat(4, 1, 1)).sum()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1]) < 1e6


def test_pickle_drops_context():
    import copy

    m = alanine_dipeptide("vacuum", platform="Reference")
    u = m.energy(m.positions[None])
    e2 = copy.deepcopy(m.energy)
    assert e2._context is None
    assert torch.equal(e2(m.positions[None]), u)


def test_bad_platform():
    m = alanine_dipeptide("vacuum")
    with pytest.raises(ValueError, match="platform"):
        OpenMMEnergy(m.system, 300.0, platform="CUDA-ish")


def test_double_backward_raises():
    m = alanine_dipeptide("vacuum", platform="Reference")
    x = m.positions[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m.energy(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


def test_energy_terms_add_up_to_the_energy_and_name_the_broken_term(mol):
    import pickle

    x = _perturbed(mol, n=4)
    x[3, 0] = x[3, 21] + 0.02  # the two ends' atoms 0.02 nm apart: an overlap, seen in the nonbonded term
    x = torch.cat([x, torch.full_like(x[:1], float("nan"))])
    groups = [f.getForceGroup() for f in mol.system.getForces()]
    terms = mol.energy.energy_terms(x)
    names = {f.__class__.__name__ for f in mol.system.getForces()}
    assert set(terms) == names and "HarmonicBondForce" in names
    total = sum(terms.values())
    u = mol.energy.energy(x).numpy()
    assert np.allclose(total[:4], u[:4], rtol=1e-9, atol=1e-6)
    assert np.isposinf(total[4]) and all(np.isposinf(v[4]) for v in terms.values())
    # the overlap shows up where it is: the nonbonded term, not the bonds
    assert terms["NonbondedForce"][3] > 1e4 and abs(terms["NonbondedForce"][0]) < 1e3
    assert [f.getForceGroup() for f in mol.system.getForces()] == groups  # the caller's System untouched
    clone = pickle.loads(pickle.dumps(mol.energy))  # the terms' Context is rebuilt, not pickled
    assert np.allclose(sum(clone.energy_terms(x[:2]).values()), u[:2], rtol=1e-9)
