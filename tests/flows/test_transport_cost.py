"""Transport-cost regularizers (kinetic energy, Jacobian Frobenius norm) along sampling paths."""
import math

import pytest
import torch

from eqflow.distributions import CoMFreeGaussian
from eqflow.flows import ContinuousFlow, exact_divergence, hutchinson_divergence, sample_noise
from eqflow.geometry import remove_mean
from eqflow.nn import EGNNField


class LinearField(torch.nn.Module):
    """v = a·(x - mean x), constant in time."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)))

    def forward(self, t, x, h=None):
        return self.a * remove_mean(x)


def random_egnn(dim, seed=0, scale=0.2):
    torch.manual_seed(seed)
    field = EGNNField(dim=dim, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(scale * torch.randn_like(p))
    return field


def test_frobenius_norm_exact_and_hutchinson(float64):
    torch.manual_seed(0)
    field = random_egnn(3, scale=0.3)
    x = torch.randn(1, 5, 3)
    t = torch.rand(1)
    jac = torch.autograd.functional.jacobian(lambda y: field(t, y.view(1, 5, 3)).flatten(), x.flatten())
    xe = x.clone().requires_grad_(True)
    div, fro = exact_divergence(field(t, xe), xe, frobenius=True)
    assert div.item() == pytest.approx(torch.trace(jac).item(), abs=1e-10)
    assert fro.item() == pytest.approx(jac.pow(2).sum().item(), rel=1e-10)
    xs = x.expand(4000, 5, 3).clone().requires_grad_(True)
    noise = sample_noise(xs.shape, "rademacher", xs.dtype)
    _, fro_h = hutchinson_divergence(field(t.expand(4000), xs), xs, noise, frobenius=True)
    # Unbiased: the mean of 4000 estimates is within a few standard errors of the exact value.
    se = fro_h.std().item() / math.sqrt(4000)
    assert abs(fro_h.mean().item() - fro.item()) < 4 * se + 1e-12


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_transport_cost_of_linear_field(float64, divergence):
    # v = a·(x - mean x), constant in t: x_t = e^{at} z, so ∫|v|² dt = a²|z|²(e^{2a} - 1)/(2a); the
    # Jacobian is a·P (P the projector onto V), ‖J‖²_F = a²(N-1)dim; the Hutchinson estimate
    # a²|Pε|² varies with ε, so its mean is compared.
    n, dim, a = 4, 2, 0.3
    flow = ContinuousFlow(LinearField(a), CoMFreeGaussian(n, dim), divergence=divergence,
                          solver="rk4", n_steps=40)
    torch.manual_seed(0)
    b = 3000 if divergence == "hutchinson" else 8
    with flow.recording_transport_cost():
        x, _ = flow.sample(b)
        cost = flow.transport_cost
    assert cost.shape == (b, 2)
    z2 = (x * math.exp(-a)).pow(2).sum((1, 2))
    kinetic = a ** 2 * z2 * (math.exp(2 * a) - 1) / (2 * a)
    assert torch.allclose(cost[:, 0], kinetic, rtol=1e-7)
    fro = a ** 2 * (n - 1) * dim
    if divergence == "exact":
        assert torch.allclose(cost[:, 1], torch.full((b,), fro), rtol=1e-10)
    else:
        assert cost[:, 1].mean().item() == pytest.approx(fro, rel=0.05)


def test_transport_cost_only_recorded_when_asked_and_on_sampling_solves(float64):
    flow = ContinuousFlow(LinearField(0.2), CoMFreeGaussian(4, 2), divergence="exact", solver="rk4", n_steps=4)
    flow.sample(3)
    assert flow.transport_cost is None
    with flow.recording_transport_cost():
        x, _ = flow.sample(3)
        first = flow.transport_cost
        flow.log_prob(x)  # a reverse solve does not overwrite the sampling path's cost
        assert flow.transport_cost is first
    flow.sample(3)
    assert flow.transport_cost is first and not flow._record_transport_cost


def test_transport_cost_has_gradients(float64):
    flow = ContinuousFlow(random_egnn(2), CoMFreeGaussian(4, 2), divergence="hutchinson", solver="rk4", n_steps=2)
    with flow.recording_transport_cost():
        flow.sample(8)
    flow.transport_cost.sum().backward()
    grads = [p.grad for p in flow.field.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
