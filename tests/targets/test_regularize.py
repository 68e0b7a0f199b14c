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


class _Harmonic:
    """u = k/2 |x|² on [B, N, dim] (a stand-in for a confinement; forces grow with the system's size)."""

    def __init__(self, n_atoms, dim, k=1.0):
        self.n_atoms, self.dim, self.k = n_atoms, dim, k

    def energy(self, x):
        return 0.5 * self.k * x.pow(2).sum((1, 2))


def test_force_clip_caps_each_atoms_gradient_and_keeps_the_value(float64):
    from eqflow.targets import masked_energy
    torch.manual_seed(0)
    target = _Harmonic(5, 3)
    x = torch.randn(4, 5, 3)
    x[0] *= 100.0  # every atom of row 0 far out: force norms ~100-300
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    u_raw, u_clip = masked_energy(target, xa), masked_energy(target, xb, force_clip=10.0)
    torch.testing.assert_close(u_raw, u_clip)  # the value is the raw energy either way
    (ga,) = torch.autograd.grad(u_raw.sum(), xa)
    (gb,) = torch.autograd.grad(u_clip.sum(), xb)
    norms = gb.norm(dim=-1)
    assert norms.max() <= 10.0 + 1e-9
    small = ga.norm(dim=-1) <= 10.0
    torch.testing.assert_close(gb[small], ga[small])  # atoms under the cap keep their exact force
    big = ~small
    assert torch.allclose(norms[big], torch.full_like(norms[big], 10.0))
    cos = (ga[big] * gb[big]).sum(-1) / (ga[big].norm(dim=-1) * gb[big].norm(dim=-1))
    assert torch.allclose(cos, torch.ones_like(cos))  # only the magnitude changes
    with pytest.raises(ValueError, match="force_clip"):
        masked_energy(target, x, force_clip=0.0)


def test_log_damping_lets_reverse_kl_expand_without_bound_and_force_clip_does_not(float64):
    # A flow that can only scale its base, x = e^a z, on u = |x|²/2 with the damping on everywhere
    # (cut 0): the optimum of the true KL is a = 0. With the log-damped energy the loss falls forever
    # as a grows (gradient (2 - dim·N) per unit a at large a); the capped force restores it.
    from eqflow.distributions import CoMFreeGaussian
    from eqflow.flows import ContinuousFlow
    from eqflow.training.losses import reverse_kl_loss

    class Scale(torch.nn.Module):
        n_node_features = 0

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, t, x, h=None):
            return self.a * x + 0.0 * t[:, None, None]

    final = {}
    for clip in (None, 5.0):
        torch.manual_seed(1)
        field = Scale()
        flow = ContinuousFlow(field, CoMFreeGaussian(6, 3), divergence="exact", solver="rk4", n_steps=2)
        opt = torch.optim.Adam(field.parameters(), lr=0.05)
        for _ in range(150):
            loss, _ = reverse_kl_loss(flow, _Harmonic(6, 3), 64, energy_cut=0.0, force_clip=clip)
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[clip] = field.a.item()
    assert final[None] > 5.0  # still growing: the sample scale e^a has grown by > 100
    assert abs(final[5.0]) < 0.5  # held near the true optimum
