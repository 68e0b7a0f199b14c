"""MALA on the CoM-free subspace: invariance of the target, relaxation, drift cap, bad starts."""
import math

import pytest
import torch

from eqflow.geometry import remove_mean
from eqflow.targets import Energy, mala


class Quadratic(Energy):
    """``u = |x|² / (2 σ²)`` on ``V``: per coordinate of ``V`` a normal of variance ``σ²``."""

    def __init__(self, n_atoms=3, dim=2, sigma=0.7):
        super().__init__(n_atoms, dim)
        self.sigma = sigma

    def _energy(self, x):
        return x.pow(2).sum((1, 2)) / (2 * self.sigma**2)


def _exact_samples(target, n, g):
    return target.sigma * remove_mean(torch.randn(n, target.n_atoms, target.dim, dtype=torch.float64, generator=g))


@pytest.mark.parametrize("max_drift", [None, 0.05])
def test_target_is_invariant(max_drift):
    # Chains started at exact samples stay exact samples: E|x|² = (N-1)·dim·σ² on V, before and after.
    target = Quadratic()
    g = torch.Generator().manual_seed(0)
    x0 = _exact_samples(target, 20000, g)
    out = mala(target, x0, n_steps=20, step_size=0.3, max_drift=max_drift, adapt_rate=0.0, generator=g)
    expected = (target.n_atoms - 1) * target.dim * target.sigma**2
    second_moment = out.x.pow(2).sum((1, 2))
    assert second_moment.mean().item() == pytest.approx(expected, rel=0.02)
    assert (second_moment / expected).var().item() == pytest.approx(2 / ((target.n_atoms - 1) * target.dim), rel=0.08)
    assert out.x.sum(1).abs().max() < 1e-12  # stays on V
    assert 0.3 < out.acceptance.mean().item() < 1.0


def test_a_bad_start_relaxes_and_the_step_adapts():
    target = Quadratic(sigma=0.1)
    g = torch.Generator().manual_seed(1)
    x0 = remove_mean(3.0 * torch.randn(2000, 3, 2, dtype=torch.float64, generator=g))  # 30 σ out
    out = mala(target, x0, n_steps=300, step_size=1.0, max_drift=0.5, generator=g)
    expected = 2 * 2 * 0.1**2
    assert out.x.pow(2).sum((1, 2)).mean().item() == pytest.approx(expected, rel=0.1)
    assert out.u.equal(target.energy(out.x))
    assert out.step_size.median().item() < 0.1  # adapted down from 1.0 to the target's scale


class Walled(Quadratic):
    """``Quadratic`` with an infinite energy where the first coordinate is within 1e-3 of 1."""

    def _energy(self, x):
        u = super()._energy(x)
        return torch.where((x[:, 0, 0] - 1.0).abs() < 1e-3, torch.full_like(u, math.inf), u)


def test_non_finite_start_takes_a_finite_proposal_and_bad_input_is_refused():
    target = Walled()
    x0 = torch.zeros(4, 3, 2, dtype=torch.float64)
    x0[:, 0, 0], x0[:, 1, 0] = 1.0, -1.0  # CoM-free, on the wall: u = inf
    assert torch.isposinf(target.energy(x0)).all()
    out = mala(target, x0, n_steps=1, step_size=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.u).all() and out.acceptance.eq(1.0).all()
    with pytest.raises(ValueError, match="step_size"):
        mala(target, x0, n_steps=1, step_size=0.0)
    with pytest.raises(ValueError, match="max_drift"):
        mala(target, x0, n_steps=1, step_size=0.1, max_drift=-1.0)
