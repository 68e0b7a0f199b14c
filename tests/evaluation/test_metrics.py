import math

import numpy as np
import pytest
import torch

from eqflow.evaluation import (distance_histogram_distance, energy_w1, ess, interatomic_distances,
                               log_weights, nll, self_normalized_weights)


def test_log_weights_and_nonfinite():
    u = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    lq = torch.tensor([0.5, 0.0, 0.0, -float("inf")])
    with pytest.warns(UserWarning, match="3 of 4"):
        lw, n_bad = log_weights(u, lq, return_count=True)
    assert n_bad == 3 and lw[0] == -1.5 and np.isneginf(lw[1:]).all()


def test_ess_limits():
    assert ess(np.zeros(100)) == pytest.approx(1.0)
    assert ess(np.full(50, 1234.5)) == pytest.approx(1.0)  # shift invariant, no overflow
    lw = np.zeros(100)
    lw[0] = 1e4
    assert ess(lw) == pytest.approx(1 / 100)
    assert ess(np.array([0.0, -np.inf])) == pytest.approx(0.5)
    assert ess(np.full(3, -np.inf)) == 0.0


def test_ess_matches_direct_formula():
    rng = np.random.default_rng(0)
    lw = rng.normal(size=1000)
    w = np.exp(lw)
    assert ess(lw) == pytest.approx(w.sum() ** 2 / (1000 * (w ** 2).sum()))


def test_self_normalized_weights():
    w = self_normalized_weights(np.array([0.0, math.log(3.0), -np.inf]) + 800.0)
    np.testing.assert_allclose(w, [0.25, 0.75, 0.0])


def test_energy_w1_shift_and_weights():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=20000)
    assert energy_w1(ref + 0.7, ref) == pytest.approx(0.7, abs=1e-9)
    samples = np.concatenate([ref, ref + 10.0])
    weights = np.concatenate([np.ones(20000), np.zeros(20000)])
    assert energy_w1(samples, ref, weights) == pytest.approx(0.0, abs=1e-9)
    assert energy_w1(np.array([0.0, np.inf]), np.array([1.0])) == pytest.approx(1.0)


def test_interatomic_distances():
    x = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]])
    np.testing.assert_allclose(interatomic_distances(x), [[3.0, 4.0, 5.0]])
    assert interatomic_distances(np.zeros((7, 13, 3))).shape == (7, 78)


def test_distance_histogram_distance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 4, 2))
    y = rng.normal(size=(4000, 4, 2))
    assert distance_histogram_distance(x, y, bins=30) < 0.05
    assert distance_histogram_distance(100 * x, y) > 0.95  # almost disjoint supports
    both = np.concatenate([x, 10 * x])
    w = np.concatenate([np.ones(4000), np.zeros(4000)])
    assert distance_histogram_distance(both, y, weights=w, bins=30) < 0.05


def test_nll():
    assert nll(torch.tensor([-1.0, -3.0])) == 2.0
