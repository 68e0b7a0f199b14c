import math

import pytest
import torch

from eqflow.distributions import CoMFreeGaussian, MixtureBase
from eqflow.geometry import is_com_free, log_volume_factor_relative, remove_mean


def orthonormal_basis_of_V(n, dim):
    """Columns: an orthonormal basis of {x in R^{n·dim} : sum_i x_i = 0}, ``[n·dim, (n-1)·dim]``."""
    p = torch.eye(n, dtype=torch.float64) - 1.0 / n  # projector in atom space
    q, _ = torch.linalg.qr(p[:, : n - 1])
    return torch.kron(q.contiguous(), torch.eye(dim, dtype=torch.float64))


@pytest.mark.parametrize("n,dim,scale", [(4, 2, 1.0), (5, 3, 0.7), (13, 3, 2.0)])
def test_density_matches_standard_normal_in_orthonormal_basis(float64, n, dim, scale):
    base = CoMFreeGaussian(n, dim, scale)
    x = base.sample(50)
    assert is_com_free(x)
    basis = orthonormal_basis_of_V(n, dim)
    coords = x.reshape(50, -1) @ basis  # isometric coordinates on V
    d = (n - 1) * dim
    ref = torch.distributions.Normal(0.0, scale).log_prob(coords).sum(-1)
    assert torch.allclose(base.log_prob(x), ref, atol=1e-10)
    assert basis.shape[1] == d


def test_normalization_by_monte_carlo(float64):
    # E_{q'}[q/q'] = 1 with q' a wider CoM-free Gaussian: checks the normalizer numerically.
    torch.manual_seed(0)
    p, q = CoMFreeGaussian(3, 2, 1.0), CoMFreeGaussian(3, 2, 1.3)
    x = q.sample(200_000)
    assert (p.log_prob(x) - q.log_prob(x)).exp().mean().item() == pytest.approx(1.0, abs=0.02)


def test_relative_coordinate_measure_factor(float64):
    # y_i = x_i - x_0 (i = 1..N-1) is a linear bijection V -> R^{(N-1)dim}; its Jacobian w.r.t. an
    # orthonormal basis of V has |det| = N^{dim/2}, i.e. dV = N^{-dim/2} dy.
    for n, dim in [(4, 2), (5, 3), (22, 3)]:
        basis = orthonormal_basis_of_V(n, dim)  # [n·dim, d]
        a = torch.zeros((n - 1) * dim, n * dim, dtype=torch.float64)
        for i in range(1, n):
            for k in range(dim):
                a[(i - 1) * dim + k, i * dim + k] = 1.0
                a[(i - 1) * dim + k, k] = -1.0
        jac = a @ basis
        logdet = torch.linalg.slogdet(jac).logabsdet.item()
        assert logdet == pytest.approx(log_volume_factor_relative(n, dim), abs=1e-10)


def test_log_prob_rejects_bad_input():
    base = CoMFreeGaussian(4, 3)
    with pytest.raises(ValueError, match="not CoM-free"):
        base.log_prob(torch.ones(2, 4, 3))
    with pytest.raises(ValueError, match="expected 4"):
        base.log_prob(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="spatial dim"):
        base.log_prob(torch.zeros(2, 4, 2))


def test_mixture_base_log_prob_and_sampling(float64):
    torch.manual_seed(0)
    mix = MixtureBase(5, 3, 3, scales=[0.5, 1.0, 2.0])
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x, k = mix.sample(20_000)
    assert is_com_free(x)
    freq = torch.bincount(k, minlength=3).double() / 20_000
    assert torch.allclose(freq, mix.log_weights.exp(), atol=0.015)
    comps = [CoMFreeGaussian(5, 3, s) for s in [0.5, 1.0, 2.0]]
    direct = torch.logsumexp(torch.stack([w + c.log_prob(x[:10]) for w, c in
                                          zip(mix.log_weights, comps)], -1), -1)
    assert torch.allclose(mix.log_prob(x[:10]), direct, atol=1e-12)
    # Samples are not grouped by component.
    assert (k[1:] != k[:-1]).double().mean() > 0.3
