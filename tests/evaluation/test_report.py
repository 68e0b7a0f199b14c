import pytest
import torch

from eqflow.config import Config
from eqflow.distributions import CoMFreeGaussian
from eqflow.evaluation.report import solver_check
from eqflow.flows import ContinuousFlow
from eqflow.generator import Generator
from eqflow.geometry import remove_mean

N_ATOMS, DIM = 5, 3


class LinearField(torch.nn.Module):
    """v = (a + b t) x on V: Jacobian trace (a + b t)·(N-1)·dim, Hutchinson estimate (a + b t)·εᵀPε."""

    n_node_features = 0

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)))
        self.b = torch.nn.Parameter(torch.tensor(float(b)))

    def forward(self, t, x, h=None):
        return (self.a + self.b * t)[:, None, None] * remove_mean(x)


def generator(a, b, divergence, solver, n_steps):
    flow = ContinuousFlow(LinearField(a, b), CoMFreeGaussian(N_ATOMS, DIM), divergence=divergence,
                          solver=solver, n_steps=n_steps)
    cfg = Config()
    cfg.flow.solver, cfg.flow.n_steps = solver, n_steps
    cfg.eval.divergence, cfg.eval.batch_size = divergence, 32
    return Generator(flow, None, cfg)


def test_solver_check_does_not_count_hutchinson_noise(float64):
    # Constant field: rk4 is converged at 8 and 16 steps, but two Hutchinson probes give log q values
    # more than 0.2 nats apart on average; the check must not report that noise as solver error.
    gen = generator(0.4, 0.0, "hutchinson", "rk4", 8)
    torch.manual_seed(0)
    x, log_q = gen.sample(64)
    fresh_probe = (gen.log_prob(x) - log_q).abs().mean()
    assert fresh_probe > 0.2
    check = solver_check(gen, 64)
    assert check["logq_solver_mae"] < 1e-6 and check["x_solver_rms"] < 1e-6


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_solver_check_sees_a_coarse_solve(float64, divergence):
    # Euler with c(t) = a + b t from the same z: one step integrates c(0), two steps (c(0) + c(1/2))/2,
    # so log q changes by (N-1)·dim·|b|/4 = 0.9 nats exactly (Hutchinson: on average, the trace's estimate
    # εᵀPε has mean (N-1)·dim).
    gen = generator(0.4, -0.3, divergence, "euler", 1)
    state = torch.get_rng_state()
    check = solver_check(gen, 64, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
    expected = (N_ATOMS - 1) * DIM * 0.3 / 4
    if divergence == "exact":
        assert check["logq_solver_mae"] == pytest.approx(expected, abs=1e-10)
        assert check["logq_solver_max"] == pytest.approx(expected, abs=1e-10)
    else:
        assert abs(check["logq_solver_mae"] - expected) < 0.2
    assert check["x_solver_rms"] > 1e-3
    assert solver_check(gen, 64, seed=3) == check  # deterministic


def test_solver_check_needs_samples():
    with pytest.raises(ValueError, match="n >= 1"):
        solver_check(generator(0.1, 0.0, "exact", "rk4", 2), 0)
