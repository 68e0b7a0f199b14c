import pytest
import torch

from eqflow.flows import exact_divergence, hutchinson_divergence, sample_noise
from eqflow.nn import EGNNField


def test_exact_divergence_equals_jacobian_trace(float64):
    torch.manual_seed(0)
    field = EGNNField(dim=3, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 5, 3, requires_grad=True)
    t = torch.rand(3)
    div = exact_divergence(field(t, x), x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda y: field(t[b:b + 1], y.view(1, 5, 3)).flatten(),
                                                 x[b].detach().flatten())
        assert div[b].item() == pytest.approx(torch.trace(jac).item(), abs=1e-10)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(float64, kind):
    torch.manual_seed(1)
    field = EGNNField(dim=3, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, 5, 3).expand(4000, 5, 3).clone().requires_grad_(True)
    v = field(torch.full((4000,), 0.3), x)
    noise = sample_noise(x.shape, kind, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    est = hutchinson_divergence(v, x, noise)
    x1 = x[:1].detach().requires_grad_(True)
    exact = exact_divergence(field(torch.full((1,), 0.3), x1), x1)[0]
    stderr = est.std() / 4000 ** 0.5
    assert abs(est.mean() - exact) < 4 * stderr + 1e-12
    if kind == "rademacher":
        assert set(noise.unique().tolist()) == {-1.0, 1.0}


def test_unknown_noise_named():
    with pytest.raises(ValueError, match="unknown Hutchinson noise 'uniform'"):
        sample_noise((2, 3), "uniform")
