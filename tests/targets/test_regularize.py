import math

import pytest
import torch

from eqflow.targets import finite_mask, regularize_energy


def test_identity_below_and_log_above():
    u = torch.tensor([-50.0, 0.0, 999.0, 1000.0, 1001.0, 1e6])
    r = regularize_energy(u, cut=1e3)
    torch.testing.assert_close(r[:4], u[:4])
    assert r[4].item() == pytest.approx(1000.0 + math.log(2.0))
    assert abs(r[5].item() - (1000.0 + math.log1p(1e6 - 1e3))) < 1e-3


def test_monotone_continuous_and_gradients_finite():
    u = torch.linspace(900.0, 1e5, 1000, dtype=torch.float64, requires_grad=True)
    r = regularize_energy(u, cut=1e3)
    assert (r[1:] >= r[:-1]).all()
    (g,) = torch.autograd.grad(r.sum(), u)
    assert torch.isfinite(g).all() and (g > 0).all() and (g <= 1).all()


def test_nonfinite_kept():
    u = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, 5.0])
    r = regularize_energy(u, cut=10.0, max_value=1e9)
    assert torch.isnan(r[0]) and torch.isposinf(r[1]) and torch.isneginf(r[2])
    assert torch.isfinite(r[3]) and r[3] < 100
    assert r[4] == 5.0
    assert finite_mask(u).tolist() == [False, False, False, True, True]


def test_max_value_clip():
    r = regularize_energy(torch.tensor([1e30]), cut=0.0, max_value=20.0)
    assert r.item() == 20.0
