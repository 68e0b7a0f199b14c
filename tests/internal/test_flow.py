import math

import mdtraj
import pytest
import torch

from eqflow.geometry import chirality_sign, is_com_free, random_rotations, remove_mean
from eqflow.internal import ICFlow, ZMatrix, internal_to_v_log_density
from eqflow.targets.molecular import ALA2_CHIRAL_CENTER, alanine_dipeptide_pdb


def _perturb(flow, scale, seed=0):
    """Random parameters (the zero-initialized flow is exactly uniform, which would test little)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


@pytest.fixture(scope="module")
def ala():
    traj = mdtraj.load(alanine_dipeptide_pdb())
    z = ZMatrix.from_topology(traj.topology)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor(traj.xyz[0], dtype=torch.float64)
    x = x0 + 0.003 * torch.randn(8, 22, 3, generator=gen, dtype=torch.float64)
    x = x @ random_rotations(8, generator=gen).transpose(1, 2)
    return z, torch.cat([x0[None], x])


def test_protocol_and_sample_log_prob_agree(ala):
    z, x = ala
    torch.manual_seed(0)
    flow = _perturb(ICFlow.from_data(z, x, hidden=(32, 32)).double(), 0.1)
    assert flow.reflection_symmetric is False and isinstance(flow, torch.nn.Module)
    xs, log_q = flow.sample(64)
    assert xs.shape == (64, 22, 3) and log_q.shape == (64,) and xs.dtype == torch.float64
    assert is_com_free(xs) and torch.isfinite(log_q).all()
    assert (flow.log_prob(xs) - log_q).abs().max() < 1e-5
    # from_data holds CA's improper torsions to the sign of the data: only L, even untrained
    center, nbrs = ALA2_CHIRAL_CENTER
    assert (chirality_sign(xs, center, nbrs) == chirality_sign(x[:1], center, nbrs)).all()
    assert (flow.log_prob(-xs) == -math.inf).all()
    # log q is invariant to rotations and translations of the input
    rot = random_rotations(64, generator=torch.Generator().manual_seed(1))
    moved = xs @ rot.transpose(1, 2) + 0.5
    assert torch.allclose(flow.log_prob(moved), log_q, atol=1e-8)


def test_float32_sample_and_score(ala):
    z, x = ala
    torch.manual_seed(1)
    flow = _perturb(ICFlow.from_data(z, x.float(), hidden=(32, 32)), 0.1)
    xs, log_q = flow.sample(32)
    assert xs.dtype == torch.float32 and torch.isfinite(log_q).all()
    assert (flow.log_prob(xs) - log_q).abs().max() < 1e-2  # log q ~ 100 nats, float32 round-off


def test_outside_box_has_zero_density(ala):
    z, x = ala
    flow = ICFlow.from_data(z, x, hidden=(8,)).double()
    stretched = x[:2].clone()
    stretched[:, 0] += torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # H1 far off its carbon
    lp = flow.log_prob(torch.cat([x[:2], stretched]))
    assert torch.isfinite(lp[:2]).all() and (lp[2:] == -math.inf).all()


def test_circular_torsions_are_continuous_across_pi():
    z = ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], root=(0, 1, 2))
    flow = _perturb(ICFlow(z, 0.5, 2.0, n_layers=4, hidden=(16,)).double(), 0.3)
    ic = torch.tensor([[1.0, 1.2, 0.9, 1.5, 2.0, 0.0]], dtype=torch.float64).repeat(2, 1)
    ic[0, -1], ic[1, -1] = math.pi - 1e-9, -math.pi + 1e-9
    lp = flow.log_prob_internal(ic)
    assert abs(lp[0] - lp[1]) < 1e-6


def test_density_integrates_to_one_on_v():
    # Four atoms, random flow parameters: ∫_V q = E_r[q/r] for a proposal r on V: internal
    # coordinates uniform on the flow's box, a uniformly random orientation, centred; r's density on V
    # comes from the same conversion, which test_measure.py checks against closed forms and Gaussians
    # on V. (A Gaussian proposal on V works too but needs ~100x more samples for this precision.)
    z = ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], root=(0, 1, 2))
    flow = _perturb(ICFlow(z, 0.6, 1.6, 0.5, 2.6, n_layers=4, hidden=(16,)).double(), 0.15)
    n, gen = 50_000, torch.Generator().manual_seed(0)
    lo, hi = flow.lower, flow.upper  # torsions: (-pi, pi)
    ic = lo + (hi - lo) * torch.rand(n, lo.numel(), generator=gen, dtype=torch.float64)
    x = remove_mean(z.inverse(ic, rot=random_rotations(n, generator=gen)))
    log_r_ic = -torch.log(hi - lo).sum()
    ic_x = z.internal(x)
    log_r = internal_to_v_log_density(log_r_ic.expand(n), z.log_volume(ic_x), 4)
    with torch.no_grad():
        w = torch.exp(flow.log_prob(x) - log_r)
    mean, se = float(w.mean()), float(w.std()) / math.sqrt(n)
    assert se < 0.01 and abs(mean - 1) < 5 * se, (mean, se)


def test_maximum_likelihood_steps_reduce_nll_and_sample_is_differentiable(ala):
    z, x = ala
    torch.manual_seed(0)
    flow = ICFlow.from_data(z, x, hidden=(64, 64)).double()
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    with torch.no_grad():
        nll0 = float(-flow.log_prob(x).mean())
    for _ in range(20):
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll1 = float(-flow.log_prob(x).mean())
        assert nll1 < nll0 - 5.0, (nll0, nll1)
        assert torch.isfinite(flow.log_prob(x)).all()
    # reparameterized sampling: gradients reach every coupling layer through x and log q
    opt.zero_grad()
    xs, log_q = flow.sample(16)
    (xs.square().sum() + log_q.sum()).backward()
    for layer in flow.layers:
        grad = layer.hyper[-1].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_chirality_can_be_left_free(ala):
    z, x = ala
    flow = ICFlow.from_data(z, x, fix_chirality=False, hidden=(8,)).double()
    assert flow.circular[z.n_bonds + z.n_angles:].all()
    # uniform torsions at initialization: both enantiomers, with the same density
    assert torch.allclose(flow.log_prob(-x), flow.log_prob(x), atol=1e-8)
    fixed = ICFlow.from_data(z, x, hidden=(8,))
    held = (~fixed.circular[z.n_bonds + z.n_angles:]).nonzero().flatten()
    assert [tuple(r) for r in z.rows[held].tolist()] == [(10, 8, 6, 14), (9, 8, 6, 14)]  # CB-, HA-CA-N-C


def test_mixed_enantiomers_in_data_warn(ala):
    z, x = ala
    with pytest.warns(UserWarning, match="change sign"):
        flow = ICFlow.from_data(z, torch.cat([x, -x]), hidden=(8,))
    assert flow.circular.sum() == z.n_torsions
