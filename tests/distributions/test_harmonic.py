import math

import pytest
import torch

from eqflow.distributions import CoMFreeGaussian, HarmonicBase, MixtureBase, graph_laplacian
from eqflow.flows import ContinuousFlow, MixtureFlow
from eqflow.geometry import is_com_free, random_orthogonal, remove_mean
from eqflow.nn import EGNNField

# A branched 5-atom graph: 0-1-2-3 with 4 on 1.
BONDS = [(0, 1), (1, 2), (2, 3), (1, 4)]


def orthonormal_basis_of_V(n, dim):
    """Columns: an orthonormal basis of {x in R^{n·dim} : sum_i x_i = 0}, ``[n·dim, (n-1)·dim]``."""
    p = torch.eye(n, dtype=torch.float64) - 1.0 / n
    q, _ = torch.linalg.qr(p[:, : n - 1])
    return torch.kron(q.contiguous(), torch.eye(dim, dtype=torch.float64))


def test_laplacian_from_bonds_and_adjacency(float64):
    lap = graph_laplacian(5, bonds=BONDS)
    assert torch.allclose(lap.sum(1), torch.zeros(5, dtype=torch.float64))
    assert lap.diagonal().tolist() == [1.0, 3.0, 2.0, 1.0, 1.0]
    adj = (lap.diagonal().diag() - lap)
    assert torch.equal(graph_laplacian(5, adjacency=adj), lap)


@pytest.mark.parametrize("k,eps,scale", [(2.3, 0.1, 0.8), (1.0, 0.0, 1.0)])
def test_log_prob_is_gaussian_in_orthonormal_basis_of_V(float64, k, eps, scale):
    n, dim = 5, 3
    base = HarmonicBase(n, dim, bonds=BONDS, k=k, eps=eps, scale=scale)
    torch.manual_seed(0)
    x = base.sample(40)
    basis = orthonormal_basis_of_V(n, dim)
    coords = x.reshape(40, -1) @ basis
    # Λ ⊗ I_dim maps V to itself: its restriction in the basis is the precision of the coordinates.
    lam = k * graph_laplacian(n, bonds=BONDS) + eps * torch.eye(n)
    prec = basis.T @ torch.kron(lam, torch.eye(dim)) @ basis / scale**2
    ref = torch.distributions.MultivariateNormal(torch.zeros(basis.shape[1]), precision_matrix=prec)
    assert torch.allclose(base.log_prob(x), ref.log_prob(coords), atol=1e-10)


@pytest.mark.parametrize("bonds,eps", [([(0, 1), (1, 2)], 0.0), ([(0, 1)], 0.3)])
def test_normalizer_by_numerical_integration(float64, bonds, eps):
    # Three atoms in 1D: V is a plane; integrate exp(log p) over it on a grid in orthonormal coordinates.
    base = HarmonicBase(3, 1, bonds=bonds, k=1.5, eps=eps, scale=0.9)
    basis = orthonormal_basis_of_V(3, 1)  # [3, 2]
    g = torch.linspace(-14, 14, 561)
    a, b = torch.meshgrid(g, g, indexing="ij")
    x = (torch.stack([a.reshape(-1), b.reshape(-1)], -1) @ basis.T)[:, :, None]
    integral = base.log_prob(remove_mean(x)).exp().sum() * (g[1] - g[0]) ** 2
    # The Riemann sum of a smooth, rapidly decaying integrand is accurate far beyond this tolerance.
    assert integral.item() == pytest.approx(1.0, abs=1e-8)


def test_samples_are_com_free_with_the_bond_covariance(float64):
    base = HarmonicBase(5, 3, bonds=BONDS, k=2.0, eps=0.05, scale=1.2)
    x = base.sample(40_000, generator=torch.Generator().manual_seed(1))
    assert is_com_free(x)
    cov = torch.einsum("bid,bjd->ij", x, x) / (x.shape[0] * 3)   # per spatial coordinate
    target = base.atom_covariance()
    assert torch.allclose(cov, target, atol=0.03 * target.abs().max())
    # Spatial coordinates are independent.
    cross = torch.einsum("bi,bj->ij", x[..., 0], x[..., 1]) / x.shape[0]
    assert cross.abs().max() < 0.03 * target.abs().max()
    # Λ⁺ is the pseudo-inverse of Λ on V: Λ Λ⁺ = projector onto V.
    lam = base.precision / base.scale**2
    assert torch.allclose(lam @ target, torch.eye(5) - 1 / 5, atol=1e-12)
    # Bonded atoms sit closer than the ends of the chain.
    d01 = (x[:, 0] - x[:, 1]).pow(2).sum(-1).mean()
    d03 = (x[:, 0] - x[:, 3]).pow(2).sum(-1).mean()
    assert d01 < 0.5 * d03


def test_rotation_and_reflection_invariant(float64):
    base = HarmonicBase(5, 3, bonds=BONDS, k=1.7, eps=0.2)
    torch.manual_seed(3)
    x = base.sample(8)
    q = random_orthogonal(8, 3, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(base.log_prob(x @ q.transpose(-1, -2)), base.log_prob(x), atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_k_zero_is_the_isotropic_gaussian(float64, scale):
    eps = 2.5
    base = HarmonicBase(6, 3, bonds=[(0, 1)], k=0.0, eps=eps, scale=scale)
    iso = CoMFreeGaussian(6, 3, scale / math.sqrt(eps))
    x = iso.sample(10)
    assert torch.allclose(base.log_prob(x), iso.log_prob(x), atol=1e-12)


def test_disconnected_graph_needs_eps():
    with pytest.raises(ValueError, match="not connected"):
        HarmonicBase(4, 3, bonds=[(0, 1), (2, 3)], k=1.0, eps=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        HarmonicBase(4, 3)


def test_from_topology_alanine():
    import mdtraj

    from eqflow.targets.molecular import alanine_dipeptide_pdb

    top = mdtraj.load_pdb(alanine_dipeptide_pdb()).topology
    base = HarmonicBase.from_topology(top, k=50.0, eps=0.0)
    assert (base.n_atoms, base.dim) == (22, 3)
    bonded = {tuple(sorted((a.index, b.index))) for a, b in top.bonds}
    lap = base.precision / 50.0
    off = {tuple(sorted(ij)) for ij in (lap < -0.5).nonzero().tolist()}
    assert off == bonded and len(bonded) == 21
    x = base.sample(4)
    assert torch.isfinite(base.log_prob(x)).all()


def test_learnable_scale_gets_gradients():
    base = HarmonicBase(5, 3, bonds=BONDS, learn_scale=True)
    x = base.sample(16)
    base.log_prob(x).sum().backward()
    assert base.log_scale.grad is not None


def random_egnn(dim, n_features=0, seed=0):
    torch.manual_seed(seed)
    field = EGNNField(dim=dim, n_node_features=n_features, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return field


def test_mixture_of_harmonic_components(float64):
    comps = [HarmonicBase(5, 3, bonds=BONDS, k=3.0), CoMFreeGaussian(5, 3, 1.5)]
    mix = MixtureBase(5, 3, components=comps)
    assert mix.n_components == 2
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.4, -0.4]))
    x, k = mix.sample(4000, generator=torch.Generator().manual_seed(0))
    assert is_com_free(x)
    direct = torch.logsumexp(torch.stack([w + c.log_prob(x[:10]) for w, c in
                                          zip(mix.log_weights, comps)], -1), -1)
    assert torch.allclose(mix.log_prob(x[:10]), direct, atol=1e-12)
    # Each row comes from its own component: the harmonic rows have short 0-1 bonds.
    d01 = (x[:, 0] - x[:, 1]).pow(2).sum(-1)
    assert d01[k == 0].mean() < 0.5 * d01[k == 1].mean()
    assert torch.allclose(mix.scales, torch.tensor([1.0, 1.5]))
    with pytest.raises(ValueError, match="components"):
        MixtureBase(5, 3, 3, components=comps)


def test_flows_with_harmonic_base_are_consistent(float64):
    # rk4 forward and reverse solves are near inverses; a wrong base density would be off by O(1).
    flow = ContinuousFlow(random_egnn(3), HarmonicBase(5, 3, bonds=BONDS, k=2.0, eps=0.1),
                          divergence="exact", solver="rk4", n_steps=8)
    torch.manual_seed(2)
    with torch.no_grad():
        x, log_q = flow.sample(6)
        assert torch.allclose(flow.log_prob(x), log_q, atol=1e-4)
    comps = [HarmonicBase(5, 3, bonds=BONDS, k=2.0), HarmonicBase(5, 3, bonds=BONDS, k=0.5, eps=0.5)]
    mflow = MixtureFlow(random_egnn(3, n_features=2, seed=1), MixtureBase(5, 3, components=comps),
                        divergence="exact", solver="rk4", n_steps=8)
    with torch.no_grad():
        x, log_q, _ = mflow.sample_with_components(6)
        assert torch.allclose(mflow.log_prob(x), log_q, atol=1e-4)


def test_harmonic_base_built_from_config_for_alanine():
    from eqflow.builders import build_base, build_flow, build_target
    from eqflow.config import ConfigError, config_from_dict

    cfg = config_from_dict({"target": {"name": "ala2_vacuum", "kwargs": {"n_workers": 0}, "reference": None},
                            "field": {"hidden": 8, "n_layers": 1, "length_scale": 0.1},
                            "flow": {"base": "harmonic", "harmonic_k": 100.0, "harmonic_eps": 10.0,
                                     "n_components": 2, "base_scale": [1.0, 1.5], "solver": "euler", "n_steps": 1}})
    target = build_target(cfg)
    try:
        flow = build_flow(cfg, target)
        comps = list(flow.base.components)
        assert [type(c).__name__ for c in comps] == ["HarmonicBase"] * 2
        assert comps[0].k == 100.0 and comps[0].eps == 10.0
        assert torch.allclose(torch.stack([c.scale for c in comps]).detach(), torch.tensor([1.0, 1.5]))
        # Bonded atoms start closer than non-bonded ones: the base follows the bond graph.
        torch.manual_seed(0)
        z, _ = flow.base.sample(2000)
        bonds = torch.tensor([(a.index, b.index) for a, b in target.topology.bonds])
        d_bond = (z[:, bonds[:, 0]] - z[:, bonds[:, 1]]).norm(dim=-1).mean()
        d_all = torch.cdist(z, z).mean()
        assert d_bond < 0.75 * d_all  # an isotropic base gives about 1
        x, log_q = flow.sample(4)
        assert torch.isfinite(log_q).all()
        dw4 = config_from_dict({"flow": {"base": "harmonic"}})
        with pytest.raises(ConfigError, match="harmonic needs a target with bonds"):
            build_base(dw4, build_target(dw4))
    finally:
        target.close()
