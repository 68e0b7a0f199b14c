import pytest
import torch

from eqflow.distributions import CoMFreeGaussian, MixtureBase
from eqflow.flows import ContinuousFlow, MixtureFlow
from eqflow.geometry import is_com_free, kabsch_rotation, random_orthogonal, random_rotations, remove_mean
from eqflow.nn import EGNNField
from eqflow.training.flow_matching import (align_pairs, draw_base, flow_matching_loss, flow_matching_path,
                                           hungarian_permutation)


class RecordingField(torch.nn.Module):
    """Returns ``c·x`` and remembers what it was called with."""

    def __init__(self, n_node_features=0, c=0.0):
        super().__init__()
        self.n_node_features, self.c = n_node_features, c

    def forward(self, t, x, h=None):
        self.seen = (t, x, h)
        return self.c * x


def egnn(dim, n_features=0, seed=0):
    torch.manual_seed(seed)
    field = EGNNField(dim=dim, n_node_features=n_features, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return field


def centred(b, n, dim, seed):
    return remove_mean(torch.randn(b, n, dim, generator=torch.Generator().manual_seed(seed)))


def test_path_and_target_by_hand(float64):
    x0 = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]])
    x1 = torch.tensor([[[0.0, -2.0], [0.0, 2.0]]])
    xt, u = flow_matching_path(x0, x1, torch.tensor([0.25]))
    assert torch.allclose(xt, torch.tensor([[[-0.75, -0.5], [0.75, 0.5]]]))
    assert torch.allclose(u, torch.tensor([[[1.0, -2.0], [-1.0, 2.0]]]))
    # Loss of the field v = 2x at t = 0.25: v - u = [[-2.5, 1], [2.5, -1]], |.|² = 7.25 per atom.
    field = RecordingField(c=2.0)
    loss, stats = flow_matching_loss(field, x0, x1, t=torch.tensor([0.25]))
    assert loss.item() == pytest.approx(7.25) and stats["fm"] == pytest.approx(7.25)
    assert torch.equal(field.seen[0], torch.tensor([0.25])) and torch.allclose(field.seen[1], xt)


def test_loss_normalization_and_weights(float64):
    x0, x1 = centred(3, 4, 3, 0), centred(3, 4, 3, 1)
    t = torch.tensor([0.0, 0.5, 1.0])
    # Zero field: ℓ_b = (1/N) Σ_i |x1_i - x0_i|².
    per = (x1 - x0).pow(2).sum(-1).mean(-1)
    loss, _ = flow_matching_loss(RecordingField(), x0, x1, t=t)
    assert loss.item() == pytest.approx(per.mean().item())
    w = torch.tensor([1.0, 3.0, 0.0])
    loss, _ = flow_matching_loss(RecordingField(), x0, x1, t=t, weights=w)
    assert loss.item() == pytest.approx(((per[0] + 3 * per[1]) / 4).item())


def test_noise_keeps_the_path_com_free(float64):
    x0, x1 = centred(2000, 5, 3, 0), centred(2000, 5, 3, 1)
    t = torch.full((2000,), 0.3)
    xt, _ = flow_matching_path(x0, x1, t, sigma_min=0.1, generator=torch.Generator().manual_seed(0))
    assert is_com_free(xt)
    dev = xt - (0.7 * x0 + 0.3 * x1)
    # CoM-free N(0, σ²P): E|ξ|² = σ²(N-1)·dim.
    assert dev.pow(2).sum((-1, -2)).mean().item() == pytest.approx(0.01 * 12, rel=0.03)


def test_kabsch_is_the_best_proper_rotation(float64):
    gen = torch.Generator().manual_seed(0)
    x0, x1 = centred(1, 6, 3, 2), centred(1, 6, 3, 3)
    r = kabsch_rotation(x1, x0)
    assert torch.linalg.det(r).item() == pytest.approx(1.0)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(1, 3, 3), atol=1e-12)
    aligned = align_pairs(x0, x1)
    best = (aligned - x0).pow(2).sum().item()
    rots = random_rotations(20_000, generator=gen)
    brute = ((x1 @ rots.transpose(-1, -2)) - x0).pow(2).sum((-1, -2))
    assert best <= brute.min().item() + 1e-12
    assert brute.min().item() < best + 0.05 * best  # the brute-force search gets close


def test_alignment_never_reflects(float64):
    # The mirror image of a chiral (3D) configuration cannot be rotated onto it.
    x0 = centred(4, 6, 3, 4)
    aligned = align_pairs(x0, -x0)
    assert (aligned - x0).pow(2).sum((-1, -2)).min() > 1e-3
    assert torch.allclose(align_pairs(x0, x0 @ random_rotations(4).transpose(-1, -2)), x0, atol=1e-10)


def test_aligned_pair_ignores_rotation_and_translation_of_x1(float64):
    x0, x1 = centred(5, 7, 3, 5), centred(5, 7, 3, 6)
    r = random_rotations(5, generator=torch.Generator().manual_seed(7))
    moved = x1 @ r.transpose(-1, -2) + torch.randn(5, 1, 3)
    assert torch.allclose(align_pairs(x0, moved), align_pairs(x0, x1), atol=1e-10)


def test_permutation_alignment_ignores_order_and_orientation_of_x1(float64):
    types = torch.tensor([0, 0, 0, 1, 1, 0])
    x0, x1 = centred(6, 6, 3, 8), centred(6, 6, 3, 9)
    base = align_pairs(x0, x1, permute=True, atom_types=types)
    # Exchange atoms of equal type and rotate x1: the aligned pair is the same.
    perm = torch.tensor([5, 2, 0, 4, 3, 1])
    r = random_rotations(6, generator=torch.Generator().manual_seed(10))
    again = align_pairs(x0, x1[:, perm] @ r.transpose(-1, -2), permute=True, atom_types=types)
    assert torch.allclose(again, base, atol=1e-10)
    # The result is a fixed point of both steps: Hungarian and Kabsch change nothing.
    assert torch.equal(hungarian_permutation(x0, base, types), torch.arange(6).expand(6, -1))
    assert torch.allclose(align_pairs(x0, base), base, atol=1e-10)
    # Atoms moved only within their type: the type-1 atoms of the result are x1's, rotated.
    gram = lambda y: torch.cdist(y, y)  # noqa: E731
    assert torch.allclose(gram(base[:, 3:5]).sum((-1, -2)), gram(x1[:, 3:5]).sum((-1, -2)), atol=1e-10)


def test_permutation_alignment_finds_a_shuffled_noisy_copy(float64):
    # x1 = rotated, shuffled, slightly perturbed copy of x0: the alignment must undo rotation and order.
    gen = torch.Generator().manual_seed(18)
    x0 = centred(32, 13, 3, 19)
    noise = 0.05 * torch.randn(32, 13, 3, generator=gen)
    perm = torch.stack([torch.randperm(13, generator=gen) for _ in range(32)])
    r = random_rotations(32, generator=gen)
    x1 = remove_mean(x0 + noise).gather(1, perm[..., None].expand(-1, -1, 3)) @ r.transpose(-1, -2)
    aligned = align_pairs(x0, x1, permute=True)
    rmsd2 = (aligned - x0).pow(2).sum((-1, -2))
    assert (rmsd2 <= noise.pow(2).sum((-1, -2)) + 1e-12).all()
    # On unrelated random configurations, permuting lowers the squared distance on average.
    y = centred(32, 13, 3, 20)
    plain = (align_pairs(x0, y) - x0).pow(2).sum((-1, -2))
    perm_ = (align_pairs(x0, y, permute=True) - x0).pow(2).sum((-1, -2))
    assert perm_.mean() < 0.8 * plain.mean()


def test_hungarian_recovers_a_shuffle(float64):
    x0 = centred(3, 5, 2, 11)
    perm = torch.tensor([3, 0, 4, 1, 2])
    p = hungarian_permutation(x0, x0[:, perm])
    assert torch.equal(x0[:, perm].gather(1, p[..., None].expand(-1, -1, 2)), x0)


def test_loss_is_invariant_under_joint_orthogonal_maps(float64):
    flow = ContinuousFlow(egnn(3, n_features=2), CoMFreeGaussian(5, 3), node_features=torch.eye(5)[:, :2])
    x0, x1 = centred(4, 5, 3, 12), centred(4, 5, 3, 13)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    q = random_orthogonal(4, generator=torch.Generator().manual_seed(14))  # rotations and reflections
    a, _ = flow_matching_loss(flow, x0, x1, t=t)
    b, _ = flow_matching_loss(flow, x0 @ q.transpose(-1, -2), x1 @ q.transpose(-1, -2), t=t)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    # A separate rotation of x1 alone is undone by the alignment.
    r = random_rotations(4, generator=torch.Generator().manual_seed(15))
    c, _ = flow_matching_loss(flow, x0, align_pairs(x0, x1 @ r.transpose(-1, -2)), t=t)
    d, _ = flow_matching_loss(flow, x0, align_pairs(x0, x1), t=t)
    assert c.item() == pytest.approx(d.item(), abs=1e-12)


def test_mixture_flow_conditions_on_the_component(float64):
    field = RecordingField(n_node_features=1 + 3)
    flow = MixtureFlow(field, MixtureBase(4, 2, 3), node_features=torch.ones(4, 1))
    x0, k = draw_base(flow, 6, generator=torch.Generator().manual_seed(0))
    assert k.shape == (6,)
    x1 = centred(6, 4, 2, 16)
    flow_matching_loss(flow, x0, x1, components=k)
    h = field.seen[2]
    assert h.shape == (6, 4, 4) and torch.equal(h[..., 0], torch.ones(6, 4))
    assert torch.equal(h[:, 0, 1:].argmax(-1), k) and torch.equal(h[:, :, 1:].sum(-1), torch.ones(6, 4))
    with pytest.raises(ValueError, match="component"):
        flow_matching_loss(flow, x0, x1)


def test_gradients_reach_the_field():
    flow = ContinuousFlow(egnn(2), CoMFreeGaussian(4, 2))
    x0, _ = draw_base(flow, 8)
    loss, _ = flow_matching_loss(flow, x0, align_pairs(x0, centred(8, 4, 2, 17).float()))
    loss.backward()
    assert all(p.grad is not None for p in flow.field.parameters() if p.requires_grad)
