"""Dropped samples never reach the parameters: a batch's gradient equals that of its finite rows."""
import math

import pytest
import torch

from eqflow.targets import DoubleWell, lj13, masked_energy
from eqflow.training.losses import reverse_kl_loss


class FixedBatchModel(torch.nn.Module):
    """A model protocol stub: ``sample(n)`` moves fixed configurations by a learnable shift and scale."""

    reflection_symmetric = True

    def __init__(self, x):
        super().__init__()
        self.register_buffer("x", x)
        self.scale = torch.nn.Parameter(torch.tensor(1.1, dtype=x.dtype))
        self.log_q0 = torch.nn.Parameter(torch.tensor(0.3, dtype=x.dtype))

    def sample(self, n):
        x = self.scale * self.x[:n]
        log_q = self.log_q0 - 0.5 * (x ** 2).flatten(1).sum(-1)
        return x, log_q

    def log_prob(self, x):  # pragma: no cover - not used here
        raise NotImplementedError


def _grads(model, target, n):
    model.zero_grad()
    loss, stats = reverse_kl_loss(model, target, n, energy_cut=1e3)
    loss.backward()
    return torch.stack([p.grad.clone() for p in model.parameters()]), stats


def _target_and_good_rows(name):
    torch.manual_seed(0)
    if name == "ala2":  # OpenMM: overlapping atoms give an infinite energy and zero force
        from eqflow.targets.molecular import alanine_dipeptide
        mol = alanine_dipeptide("implicit")
        good = mol.positions[None] + 0.005 * torch.randn(6, 22, 3, dtype=torch.float64)
        return mol.energy, good - good.mean(1, keepdim=True)
    target = DoubleWell() if name == "dw4" else lj13()
    good = torch.randn(6, target.n_atoms, target.dim, dtype=torch.float64) * (1.5 if name == "dw4" else 0.9)
    return target, good - good.mean(1, keepdim=True)


@pytest.mark.parametrize("name", ["dw4", "lj13", "ala2"])
def test_batch_with_nonfinite_rows_has_exactly_the_gradient_of_its_finite_rows(name):
    target, good = _target_and_good_rows(name)
    bad = good[:2].clone()
    bad[:, 1] = bad[:, 0]  # two particles on top of each other: DW4 NaN force, LJ infinite energy
    mixed = torch.cat([good[:3], bad, good[3:]])
    g_mixed, stats = _grads(FixedBatchModel(mixed), target, len(mixed))
    g_good, _ = _grads(FixedBatchModel(good), target, len(good))
    assert stats["n_dropped"] == 2
    assert torch.isfinite(g_mixed).all()
    torch.testing.assert_close(g_mixed, g_good, rtol=1e-12, atol=0)


def test_masked_energy_values_and_zero_gradient_rows():
    target = DoubleWell()
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    x[1, 2] = x[1, 3]
    x.requires_grad_(True)
    u = masked_energy(target, x)
    assert math.isinf(u[1].item()) and torch.isfinite(u[[0, 2]]).all()
    torch.testing.assert_close(u[[0, 2]], target.energy(x.detach())[[0, 2]])
    (g,) = torch.autograd.grad(u[[0, 2]].sum(), x)
    assert (g[1] == 0).all()
    (g_ref,) = torch.autograd.grad(target.energy(x[[0, 2]]).sum(), x)
    torch.testing.assert_close(g, g_ref)
