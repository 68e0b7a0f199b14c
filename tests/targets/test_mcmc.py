import pytest
import torch

from eqflow.geometry import is_com_free
from eqflow.targets import DoubleWell, Energy
from eqflow.targets.mcmc import initial_particle_positions, metropolis, sample_particle_system


class Trap(Energy):
    """u = k/2 * sum_i |x_i - x_com|^2: a Gaussian on the CoM-free subspace, E[u] = (N-1) dim / 2."""

    def __init__(self, n, dim, k=1.0):
        super().__init__(n, dim)
        self.k = k

    def _energy(self, x):
        xc = x - x.mean(1, keepdim=True)
        return 0.5 * self.k * (xc ** 2).sum((1, 2))


def test_harmonic_pair_moments():
    k = 4.0
    e = Trap(2, 1, k)
    x0 = torch.zeros(400, 2, 1, dtype=torch.float64)
    res = metropolis(e, x0, n_steps=400, step_size=1.0, burn_in=200, thin=4, seed=0, progress=False)
    r = res.samples[:, 1, 0] - res.samples[:, 0, 0]
    # On V, |x|^2 = r^2 / 2, so u = k r^2 / 4 and r ~ N(0, 2 / k).
    assert abs(r.mean().item()) < 0.03
    assert r.var().item() == pytest.approx(2.0 / k, rel=0.05)
    assert 0.25 < res.acceptance < 0.6
    assert is_com_free(res.samples)
    assert res.samples.shape == (400 * 100, 2, 1) and res.energies.shape == (40000,)


def test_trap_mean_energy_counts_com_free_dimensions():
    e = Trap(3, 2)
    x0 = torch.zeros(500, 3, 2, dtype=torch.float64)
    res = metropolis(e, x0, n_steps=200, step_size=0.5, burn_in=200, thin=4, seed=1, progress=False)
    # (3 - 1) * 2 = 4 dimensions -> E[u] = 2 (6 ambient dimensions would give 3).
    assert res.energies.mean().item() == pytest.approx(2.0, abs=0.08)
    torch.testing.assert_close(res.energies, e.energy(res.samples))


def test_reproducible_and_rejects_bad_start():
    e = DoubleWell()
    gen = torch.Generator().manual_seed(0)
    x0 = initial_particle_positions(4, 2, 20, 3.0, generator=gen)
    a = metropolis(e, x0, n_steps=20, burn_in=10, thin=5, seed=3, progress=False)
    b = metropolis(e, x0, n_steps=20, burn_in=10, thin=5, seed=3, progress=False)
    torch.testing.assert_close(a.samples, b.samples)
    bad = x0.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        metropolis(e, bad, n_steps=10, burn_in=0, thin=1, progress=False)


def test_dw4_small_run_is_bimodal():
    res, target, cfg = sample_particle_system("dw4", n_samples=2000, chains=200, burn_in=500, seed=0,
                                              progress=False)
    assert res.samples.shape == (2000, 4, 2) and cfg["chains"] == 200
    assert -23.5 < res.energies.mean().item() < -21.5
    i, j = torch.triu_indices(4, 4, 1)
    dist = (res.samples[:, i] - res.samples[:, j]).norm(dim=-1).ravel()
    short = ((dist > 1) & (dist < 3.2)).float().mean()
    long = ((dist > 4.8) & (dist < 7)).float().mean()
    mid = ((dist > 3.6) & (dist < 4.4)).float().mean()
    assert short > 0.2 and long > 0.2 and mid < 0.1


@pytest.mark.parametrize("lattice,n", [("cubic", 13), ("fcc", 13), ("fcc", 55)])
def test_initial_positions_overlap_free(lattice, n):
    gen = torch.Generator().manual_seed(0)
    x = initial_particle_positions(n, 3, 8, 1.0, generator=gen, lattice=lattice)
    assert x.shape == (8, n, 3) and is_com_free(x)
    i, j = torch.triu_indices(n, n, 1)
    assert (x[:, i] - x[:, j]).norm(dim=-1).min() > 0.5
    if lattice == "fcc" and n == 13:  # close packed: near the LJ13 minimum (-44.3)
        from eqflow.targets import lj13
        assert lj13(oscillator=False).energy(x).mean() < -30


def test_lj_run_reports_both_starts():
    res, _, cfg = sample_particle_system("lj13", n_samples=40, chains=20, burn_in=20, thin=2, seed=0,
                                         progress=False)
    assert res.samples.shape == (40, 13, 3)
    assert set(cfg["mean_energy_by_start"]) == {"close_packed", "loose_grid"}
