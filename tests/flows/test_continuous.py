import math

import pytest
import torch

from eqflow.distributions import CoMFreeGaussian, MixtureBase
from eqflow.flows import ContinuousFlow, MixtureFlow
from eqflow.geometry import is_com_free, remove_mean
from eqflow.nn import EGNNField


class LinearField(torch.nn.Module):
    """v = c(t) x with c(t) = a + b t: x(1) = exp(a + b/2) z, log det on V = (a + b/2)(N-1)dim."""

    n_node_features = 0

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)))
        self.b = torch.nn.Parameter(torch.tensor(float(b)))

    def forward(self, t, x, h=None):
        return (self.a + self.b * t)[:, None, None] * remove_mean(x)


def random_egnn(dim, n_features=0, seed=0, scale=0.2):
    torch.manual_seed(seed)
    field = EGNNField(dim=dim, n_node_features=n_features, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(scale * torch.randn_like(p))
    return field


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_linear_dynamics_known_log_det(float64, solver):
    n, dim, a, b = 5, 3, 0.4, -0.3
    flow = ContinuousFlow(LinearField(a, b), CoMFreeGaussian(n, dim), divergence="exact",
                          solver=solver, n_steps=50, rtol=1e-10, atol=1e-10)
    torch.manual_seed(0)
    x, log_q = flow.sample(16)
    d = (n - 1) * dim
    if solver == "euler":
        # Euler: x_{i+1} = (1 + c(t_i) h) x_i and Δ = d · Σ c(t_i) h (left Riemann sum).
        ts = torch.arange(50) / 50
        c = a + b * ts
        z = x / torch.prod(1 + c / 50)
        expected = flow.base.log_prob(remove_mean(z)) - d * c.sum() / 50
        tol = 1e-10
    else:
        c = a + b / 2
        z = x * math.exp(-c)
        expected = flow.base.log_prob(remove_mean(z)) - c * d
        tol = 1e-8
    assert torch.allclose(log_q, expected, atol=tol)


def test_round_trip_sample_then_log_prob(float64):
    flow = ContinuousFlow(random_egnn(3, scale=0.1), CoMFreeGaussian(6, 3), divergence="exact",
                          solver="dopri5", rtol=1e-8, atol=1e-8)
    torch.manual_seed(1)
    with torch.no_grad():
        x, log_q = flow.sample(8)
        assert is_com_free(x)
        assert torch.allclose(flow.log_prob(x), log_q, atol=1e-6)


def test_round_trip_hutchinson_rk4(float64):
    flow = ContinuousFlow(random_egnn(2), CoMFreeGaussian(4, 2), divergence="hutchinson", solver="rk4",
                          n_steps=40)
    torch.manual_seed(2)
    with torch.no_grad():
        x, log_q = flow.sample(500)
        exact = flow.log_prob(x, divergence="exact")
    # Different noise in each solve: agreement in mean (unbiased), not per sample.
    diff = log_q - exact
    assert abs(diff.mean()) < 4 * diff.std() / 500 ** 0.5 + 1e-4


def test_log_density_matches_brute_force_jacobian(float64):
    n, dim = 4, 2
    flow = ContinuousFlow(random_egnn(dim, seed=3, scale=0.2), CoMFreeGaussian(n, dim, 1.0),
                          divergence="exact", solver="dopri5", rtol=1e-9, atol=1e-9)
    p = torch.eye(n) - 1.0 / n
    q, _ = torch.linalg.qr(p[:, : n - 1])
    basis = torch.kron(q.contiguous(), torch.eye(dim))  # [n·dim, (n-1)·dim]

    def phi(u):  # orthonormal coordinates on V -> coordinates of φ(z) on V
        z = (basis @ u).view(1, n, dim)
        x, _ = flow.integrate(z, 0.0, 1.0, divergence=None)
        return basis.T @ x.flatten()

    torch.manual_seed(4)
    for _ in range(3):
        u = torch.randn((n - 1) * dim)
        z = (basis @ u).view(1, n, dim)
        with torch.no_grad():
            x, delta = flow.integrate(z, 0.0, 1.0)
        logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(phi, u)).logabsdet
        assert delta.item() == pytest.approx(logdet.item(), abs=1e-6)
        log_q = flow.base.log_prob(z) - logdet
        assert flow.log_prob(x).item() == pytest.approx(log_q.item(), abs=1e-6)


def test_mixture_log_q_integrates_to_one(float64):
    # Two particles in 2D: V is 2D, x = (u/√2, -u/√2), so the density can be integrated on a grid.
    n, dim, k = 2, 2, 2
    flow = MixtureFlow(random_egnn(dim, n_features=k, seed=5, scale=0.15), MixtureBase(n, dim, k, [0.6, 1.4]),
                       divergence="exact", solver="rk4", n_steps=20)
    with torch.no_grad():
        flow.base.logits.copy_(torch.tensor([0.3, -0.3]))
        g = torch.linspace(-10, 10, 81)
        uu = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        x = torch.stack([uu, -uu], 1) / math.sqrt(2)
        log_q = flow.log_prob(x)
        integral = log_q.exp().sum() * (g[1] - g[0]) ** 2
    # The Riemann sum's own error at this spacing is ~4e-3 (1e-3 lower at half the spacing).
    assert integral.item() == pytest.approx(1.0, abs=6e-3)
    # The mixture density is the weighted sum of its components, each a proper flow density.
    with torch.no_grad():
        comps = flow.component_log_prob(x[:5])
        assert torch.allclose(log_q[:5], torch.logsumexp(flow.base.log_weights + comps, -1))


def test_mixture_sample_log_q_matches_log_prob(float64):
    flow = MixtureFlow(random_egnn(3, n_features=2 + 3, seed=6), MixtureBase(5, 3, 3, [0.5, 1.0, 1.5]),
                       node_features=torch.eye(5)[:, :2], divergence="exact", solver="dopri5",
                       rtol=1e-8, atol=1e-8)
    torch.manual_seed(7)
    with torch.no_grad():
        x, log_q, k = flow.sample_with_components(12)
        assert torch.allclose(flow.log_prob(x), log_q, atol=1e-6)
        _, _, ks = flow.sample_with_components(300, with_log_prob=False, stratified=True)
    assert torch.bincount(ks).tolist() == [100, 100, 100]
    assert (ks[1:] != ks[:-1]).double().mean() > 0.4  # shuffled, not in blocks


@pytest.mark.parametrize("mode", ["adjoint", "checkpoint"])
def test_memory_saving_modes_give_the_same_gradients(float64, mode):
    field = random_egnn(3, seed=8)
    grads = {}
    for m in ["plain", mode]:
        flow = ContinuousFlow(field, CoMFreeGaussian(5, 3), divergence="hutchinson", solver="rk4", n_steps=8,
                              adjoint=m == "adjoint", checkpoint=m == "checkpoint")
        torch.manual_seed(9)
        x, log_q = flow.sample(6)
        field.zero_grad()
        (log_q + x.pow(2).sum((1, 2))).mean().backward()
        grads[m] = torch.cat([p.grad.flatten() for p in field.parameters()])
    tol = 0.0 if mode == "checkpoint" else 1e-3 * grads["plain"].abs().max().item()
    assert (grads[mode] - grads["plain"]).abs().max().item() <= tol


@pytest.mark.parametrize("mode", ["plain", "adjoint", "checkpoint"])
def test_batched_exact_divergence_in_every_memory_mode(float64, mode):
    # The batched exact divergence and row blocks inside the solver: forward solve, adjoint pass and
    # checkpoint recomputation give the loop's log-densities and gradients.
    field = random_egnn(3, seed=10)
    out = {}
    for name, method, chunk, rows in (("loop", "loop", None, None), ("batched", "batched", 4, None),
                                      ("rows", "loop", None, 2)):
        flow = ContinuousFlow(field, CoMFreeGaussian(4, 3), divergence="exact", solver="rk4", n_steps=3,
                              adjoint=mode == "adjoint", checkpoint=mode == "checkpoint",
                              exact_method=method, exact_chunk_size=chunk, exact_row_chunk=rows)
        torch.manual_seed(11)
        with flow.recording_transport_cost():  # the Frobenius term from the same rows
            x, log_q = flow.sample(3)
        field.zero_grad()
        (log_q + x.pow(2).sum((1, 2)) + flow.transport_cost.sum(-1)).mean().backward()
        out[name] = (torch.cat([log_q.detach(), flow.transport_cost.detach().flatten()]),
                     torch.cat([p.grad.flatten() for p in field.parameters()]))
    for name in ("batched", "rows"):  # rows: field and divergence on blocks of 2 of the 3 rows
        assert torch.allclose(out[name][0], out["loop"][0], rtol=0, atol=1e-10)
        assert torch.allclose(out[name][1], out["loop"][1], rtol=0, atol=1e-10)


def test_skip_log_prob_and_no_graph_when_evaluating():
    flow = ContinuousFlow(random_egnn(3), CoMFreeGaussian(5, 3), solver="midpoint", n_steps=4)
    x, log_q = flow.sample(3, with_log_prob=False)
    assert log_q is None and x.shape == (3, 5, 3)
    with torch.no_grad():
        x, log_q = flow.sample(3)
    assert not x.requires_grad and not log_q.requires_grad


def test_errors_name_the_problem():
    field = random_egnn(3)
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        ContinuousFlow(field, CoMFreeGaussian(5, 3), solver="rk45")
    with pytest.raises(ValueError, match="unknown divergence"):
        ContinuousFlow(field, CoMFreeGaussian(5, 3), divergence="skilling")
    with pytest.raises(ValueError, match="unknown exact-divergence method"):
        ContinuousFlow(field, CoMFreeGaussian(5, 3), exact_method="vmap")
    flow = ContinuousFlow(field, CoMFreeGaussian(5, 3))
    with pytest.raises(ValueError, match="not CoM-free"):
        flow.log_prob(torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match="expected 5"):
        flow.log_prob(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="node features"):
        MixtureFlow(field, MixtureBase(5, 3, 2))


def test_sample_zero_and_nonfinite_log_prob_input():
    from eqflow.distributions import MixtureBase
    from eqflow.flows import MixtureFlow
    from eqflow.nn import EGNNField

    torch.manual_seed(0)
    flow = MixtureFlow(EGNNField(dim=2, n_node_features=2, hidden=8, n_layers=1), MixtureBase(4, 2, 2, 1.0),
                       n_steps=2)
    x, log_q = flow.sample(0)
    assert x.shape == (0, 4, 2) and log_q.shape == (0,)
    with pytest.raises(ValueError, match=">= 0"):
        flow.sample(-3)
    bad = flow.sample(3)[0].detach()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite positions .* in 1 of 3"):
        flow.log_prob(bad)


class WithoutClosedForm(torch.nn.Module):
    """The same field seen through a wrapper that hides its closed-form divergence: autograd's trace."""

    def __init__(self, field):
        super().__init__()
        self.inner, self.n_node_features = field, field.n_node_features

    def forward(self, t, x, h=None):
        return self.inner(t, x, h)


@pytest.mark.parametrize("mode", ["plain", "adjoint", "checkpoint"])
def test_pairwise_closed_form_divergence_in_the_flow_equals_autograds(float64, mode):
    # Log-densities and their parameter gradients with the pair field's closed-form divergence equal
    # those of the per-coordinate autograd trace, in every memory mode; evaluation keeps no graph.
    from eqflow.nn import PairwiseField
    torch.manual_seed(12)
    field = PairwiseField(dim=3, hidden=16, n_layers=2, n_basis=8, r_max=3.0)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.2 * torch.randn_like(p))
    out = {}
    for name, f in (("closed", field), ("autograd", WithoutClosedForm(field))):
        flow = ContinuousFlow(f, CoMFreeGaussian(5, 3), divergence="exact", solver="rk4", n_steps=4,
                              adjoint=mode == "adjoint", checkpoint=mode == "checkpoint")
        torch.manual_seed(13)
        x, log_q = flow.sample(4)
        field.zero_grad()
        (log_q + x.pow(2).sum((1, 2))).mean().backward()
        out[name] = (log_q.detach(), torch.cat([p.grad.flatten() for p in field.parameters()]))
        with torch.no_grad():
            x_eval, lq_eval = flow.sample(3)
        assert not lq_eval.requires_grad
    assert torch.allclose(out["closed"][0], out["autograd"][0], rtol=0, atol=1e-10)
    assert torch.allclose(out["closed"][1], out["autograd"][1], rtol=1e-8, atol=1e-10)
