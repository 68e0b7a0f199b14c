"""The Rényi-α energy loss (``train.kl_alpha``): weights by hand, its gradient identities, ranks."""
import math

import pytest
import torch

from eqflow.config import ConfigError, apply_overrides, load_config
from eqflow.targets import DoubleWell
from eqflow.training.losses import renyi_weights, reverse_kl_loss

from test_dropped_gradients import FixedBatchModel


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 2, dtype=torch.float64, generator=g) * 1.5
    return x - x.mean(1, keepdim=True)


def _grad(model, n, **kw):
    model.zero_grad()
    loss, stats = reverse_kl_loss(model, DoubleWell(), n, energy_cut=1e9, **kw)
    loss.backward()
    return torch.stack([p.grad.clone() for p in model.parameters()]), loss, stats


def test_weights_by_hand():
    log_w = torch.tensor([0.0, 1.0, -math.inf, 2.0], dtype=torch.float64)
    # alpha = 1: every finite sample counts alike (n / n_finite, so the mean over n is the mean over the kept)
    torch.testing.assert_close(renyi_weights(log_w, 1.0), torch.tensor([4 / 3, 4 / 3, 0, 4 / 3], dtype=torch.float64))
    # alpha = 0: n · softmax(log w)
    e = torch.tensor([1.0, math.e, 0.0, math.e ** 2], dtype=torch.float64)
    torch.testing.assert_close(renyi_weights(log_w, 0.0), 4 * e / e.sum())
    # alpha = 0.5: n · softmax(log w / 2)
    e = torch.tensor([1.0, math.e ** 0.5, 0.0, math.e], dtype=torch.float64)
    torch.testing.assert_close(renyi_weights(log_w, 0.5), 4 * e / e.sum())
    assert (renyi_weights(torch.full((3,), -math.inf), 0.0) == 0).all()
    with pytest.raises(ValueError, match="alpha"):
        renyi_weights(log_w, 1.5)


def test_alpha_one_is_reverse_kl_and_alpha_zero_is_the_gradient_of_log_mean_w():
    x = _batch()
    g_kl, loss_kl, st = _grad(FixedBatchModel(x), len(x))
    g_one, loss_one, _ = _grad(FixedBatchModel(x), len(x), alpha=1.0)
    torch.testing.assert_close(g_one, g_kl, rtol=0, atol=0)
    # alpha = 0: the gradient of -log mean_i w_i with w_i = exp(-u_i - log q_i), both reparameterized
    model = FixedBatchModel(x)
    g0, _, st0 = _grad(model, len(x), alpha=0.0)
    model.zero_grad()
    xs, log_q = model.sample(len(x))
    log_w = -DoubleWell().energy(xs) - log_q
    (-(torch.logsumexp(log_w, 0) - math.log(len(x)))).backward()
    g_ref = torch.stack([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(g0, g_ref, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(g0, g_kl)
    assert st0["kl"] == pytest.approx(st["kl"])  # the logged KL is the plain estimate


def test_intermediate_alpha_weights_each_sample_by_w_to_the_one_minus_alpha():
    x = _batch(seed=1)
    alpha = 0.3
    model = FixedBatchModel(x)
    g, _, stats = _grad(model, len(x), alpha=alpha)
    w_hat = torch.softmax((1 - alpha) * stats["log_w"], 0)
    model.zero_grad()
    xs, log_q = model.sample(len(x))
    ((w_hat * (DoubleWell().energy(xs) + log_q)).sum()).backward()
    torch.testing.assert_close(g, torch.stack([p.grad.clone() for p in model.parameters()]), rtol=1e-10, atol=1e-12)


def test_dropped_rows_get_no_weight():
    good = _batch(6, seed=2)
    bad = good[:2].clone()
    bad[:, 1] = bad[:, 0]  # coincident particles: DW4's force is not finite there
    mixed = torch.cat([good[:3], bad, good[3:]])
    g_mixed, _, stats = _grad(FixedBatchModel(mixed), len(mixed), alpha=0.0)
    g_good, _, _ = _grad(FixedBatchModel(good), len(good), alpha=0.0)
    assert stats["n_dropped"] == 2
    torch.testing.assert_close(g_mixed, g_good, rtol=1e-10, atol=1e-12)


def test_weights_normalized_over_ranks_give_the_single_process_gradient():
    """Two ranks with half the batch each, weights normalized over both (``gather``): the mean of their
    gradients (what the all-reduce computes) is the gradient of one process on the whole batch."""
    x = _batch(8, seed=3)
    g_all, _, _ = _grad(FixedBatchModel(x), 8, alpha=0.0)
    halves = [x[:4], x[4:]]
    with torch.no_grad():
        log_w = [-DoubleWell().energy(h * 1.1) - (0.3 - 0.5 * ((h * 1.1) ** 2).flatten(1).sum(-1)) for h in halves]
    grads = []
    for r in range(2):
        gather = lambda lw, r=r: torch.cat([lw, log_w[1 - r]]) if r == 0 else torch.cat([log_w[0], lw])
        g, _, _ = _grad(FixedBatchModel(halves[r]), 4, alpha=0.0, gather=gather)
        grads.append(g)
    torch.testing.assert_close((grads[0] + grads[1]) / 2, g_all, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("overrides, message", [
    (["train.kl_alpha=1.5"], "kl_alpha"),
    (["train.kl_alpha=-0.1"], "kl_alpha"),
    (["train.kl_alpha=0.5", "train.kl_gradient=path", "flow.divergence=exact"], "kl_alpha"),
    (["train.kl_alpha=0.5"], "flow.divergence: exact"),  # dw4.yaml trains with Hutchinson
])
def test_config_refuses_bad_alpha(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("configs/dw4.yaml"), overrides)
