import math

import numpy as np
import pytest
import torch

from eqflow.evaluation import (distance_histogram_distance, energy_w1, ess, ess_split, interatomic_distances,
                               log_weights, max_weight, nll, pareto_k, self_normalized_weights)


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


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
def test_pareto_k_recovers_the_tail_index_of_pareto_weights(alpha):
    # weights w ~ 1 + Pareto(alpha) have the tail P(w > t) ~ t^-alpha, i.e. generalized Pareto shape 1/alpha
    rng = np.random.default_rng(0)
    log_w = np.log1p(rng.pareto(alpha, 20000)) + 3.0  # a shift of log w changes nothing
    assert pareto_k(log_w) == pytest.approx(1.0 / alpha, abs=0.12)


def test_pareto_k_small_for_light_tails_and_nan_when_too_few():
    rng = np.random.default_rng(1)
    assert pareto_k(rng.normal(0.0, 0.3, 5000)) < 0.3  # log-normal weights with small spread
    assert pareto_k(np.zeros(1000)) == 0.0  # equal weights: no tail
    assert math.isnan(pareto_k(np.zeros(10)))
    assert pareto_k(np.array([0.0] * 999 + [-np.inf])) == 0.0  # zero weights are not part of the tail


def test_ess_split_parts_are_the_ess_of_disjoint_parts_and_max_weight():
    rng = np.random.default_rng(2)
    log_w = rng.normal(0.0, 2.0, 1000)
    parts = ess_split(log_w, 5)
    assert parts.shape == (5,)
    assert parts[2] == pytest.approx(ess(log_w[400:600]), rel=1e-12)
    assert ess_split(np.zeros(3), 5).tolist() == [1.0, 1.0, 1.0]
    w = np.exp(log_w - log_w.max())
    assert max_weight(log_w) == pytest.approx(w.max() / w.sum(), rel=1e-12)
    assert max_weight(np.zeros(4)) == pytest.approx(0.25)
