import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from eqflow.nn import E3NNConv, E3NNField, PolynomialCutoff, RadialEmbedding, cueq_available, dense_edges
from eqflow.nn import cueq as cueq_module

IRREPS_IN = o3.Irreps("4x0e + 2x1o + 1x2e")
IRREPS_SH = o3.Irreps.spherical_harmonics(2)
N_ATOMS = 6


def make_conv(backend="e3nn", edge_channels=None):
    torch.manual_seed(0)
    conv = E3NNConv(IRREPS_IN, "4x0e + 2x1o + 2x1e + 1x2e", IRREPS_SH, n_basis=6, radial_hidden=8,
                    edge_channels=edge_channels, backend=backend)
    with torch.no_grad():  # random, non-tiny weights
        for p in conv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return conv


def run_conv(conv, f, pos, r_max=4.0):
    """One structure: node features ``f`` [N, irreps_in.dim], positions ``pos`` [N, 3]."""
    src, dst = dense_edges(1, pos.shape[0])
    vec = pos[dst] - pos[src]
    sh = o3.spherical_harmonics(IRREPS_SH, vec, normalize=True, normalization="component")
    radial = RadialEmbedding(r_max, 6)(vec.norm(dim=-1))
    return conv(f, sh, radial, src, dst, avg_num_neighbors=pos.shape[0] - 1)


def test_conv_irreps_are_typed():
    conv = make_conv()
    assert isinstance(conv.irreps_in, o3.Irreps) and isinstance(conv.irreps_out, o3.Irreps)
    assert conv.irreps_in == IRREPS_IN
    assert conv.irreps_out == o3.Irreps("4x0e + 2x1o + 2x1e + 1x2e")
    # Depthwise product: one weight per channel path, far fewer than a fully connected product.
    fc = o3.FullyConnectedTensorProduct(IRREPS_IN, IRREPS_SH, conv.gate.irreps_in)
    assert conv.tp.weight_numel < fc.weight_numel / 2


@pytest.mark.parametrize("edge_channels", [None, 3])
def test_conv_o3_equivariant_float64(float64, edge_channels):
    conv = make_conv(edge_channels=edge_channels)
    args = [IRREPS_IN.randn(N_ATOMS, -1), torch.randn(N_ATOMS, 3)]
    errors = assert_equivariant(lambda f, pos: run_conv(conv, f, pos), args_in=args,
                                irreps_in=[IRREPS_IN, "cartesian_points"], irreps_out=[conv.irreps_out],
                                tolerance=1e-10, ntrials=3)  # rotations, reflections, translations
    assert max(e.max().item() for e in errors.values()) < 1e-10


def test_conv_permutation_equivariant_and_sees_neighbours(float64):
    conv = make_conv()
    f, pos = IRREPS_IN.randn(N_ATOMS, -1), torch.randn(N_ATOMS, 3)
    perm = torch.randperm(N_ATOMS, generator=torch.Generator().manual_seed(1))
    out = run_conv(conv, f, pos)
    assert (run_conv(conv, f[perm], pos[perm]) - out[perm]).abs().max() < 1e-12
    moved = pos.clone()
    moved[0] += 0.3
    assert (run_conv(conv, f, moved) - out)[1:].abs().max() > 1e-6  # messages depend on geometry


def test_cutoff_envelope_is_smooth_and_exactly_zero_beyond(float64):
    cut = PolynomialCutoff(2.0, p=6)
    r = torch.tensor([0.0, 1.999999, 2.0, 2.5], requires_grad=True)
    u = cut(r)
    assert u[0].item() == 1.0 and u[2].item() == 0.0 and u[3].item() == 0.0
    assert abs(u[1].item()) < 1e-12
    (g,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), r)
    assert g[1:].abs().max() < 1e-10 and g2[1:].abs().max() < 1e-3  # continuous forces and curvature


def test_radius_edges_equal_dense_edges(float64):
    torch.manual_seed(2)
    dense = E3NNField(n_node_features=2, n_scalars=8, hidden_irreps="8x0e + 4x1o", n_layers=2, r_max=2.0,
                      edges="dense")
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.3 * torch.randn_like(p))
    sparse = E3NNField(n_node_features=2, n_scalars=8, hidden_irreps="8x0e + 4x1o", n_layers=2, r_max=2.0,
                       edges="radius")
    sparse.load_state_dict(dense.state_dict())
    x = (1.5 * torch.randn(3, 10, 3)).requires_grad_(True)
    t, h = torch.rand(3), torch.randn(10, 2)[None].expand(3, -1, -1)
    d = torch.cdist(x, x)
    assert (d > 2.0).float().mean() > 0.2  # a good part of the pairs is beyond the cutoff
    v_dense, v_sparse = dense(t, x, h), sparse(t, x, h)
    assert (v_dense - v_sparse).abs().max() < 1e-12
    eps = torch.randn_like(x)
    (g_dense,) = torch.autograd.grad(v_dense, x, eps)
    (g_sparse,) = torch.autograd.grad(v_sparse, x, eps)
    assert (g_dense - g_sparse).abs().max() < 1e-12  # so divergences agree too


def test_bad_backend_and_edges_named():
    with pytest.raises(ValueError, match="backend"):
        E3NNField(backend="jax")
    with pytest.raises(ValueError, match="edges"):
        E3NNField(edges="knn")
    with pytest.raises(ValueError, match="1o"):
        E3NNField(hidden_irreps="8x0e")


def test_cueq_missing_raises_clearly(monkeypatch):
    monkeypatch.setattr(cueq_module, "cueq_available", lambda: False)
    with pytest.raises(ImportError, match="cuequivariance-torch"):
        E3NNConv("4x0e", "4x0e + 2x1o", IRREPS_SH, n_basis=4, backend="cueq")


@pytest.mark.skipif(not cueq_available(), reason="cuequivariance-torch not installed")
@pytest.mark.parametrize("edges", ["dense", "radius"])
def test_cueq_backend_equals_e3nn(float64, edges):
    kw = dict(n_node_features=3, n_scalars=8, hidden_irreps="8x0e + 4x1o + 2x1e + 2x2e", n_layers=2, r_max=3.0,
              edge_channels=4, edges=edges)
    torch.manual_seed(3)
    ref = E3NNField(**kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cu = E3NNField(backend="cueq", **kw)
    cu.load_state_dict(ref.state_dict())  # the backends share every parameter
    x = (1.5 * torch.randn(2, N_ATOMS, 3)).requires_grad_(True)
    t, h = torch.rand(2), torch.randn(N_ATOMS, 3)[None].expand(2, -1, -1)
    v_ref, v_cu = ref(t, x, h), cu(t, x, h)
    assert (v_ref - v_cu).abs().max() < 1e-12
    eps = torch.randn_like(x)
    (g_ref,) = torch.autograd.grad(v_ref, x, eps, create_graph=True)
    (g_cu,) = torch.autograd.grad(v_cu, x, eps, create_graph=True)
    assert (g_ref - g_cu).abs().max() < 1e-12
    # Parameter gradients through the Hutchinson term (the training path) agree as well.
    p_ref = torch.autograd.grad((g_ref * eps).sum(), list(ref.parameters()))
    p_cu = torch.autograd.grad((g_cu * eps).sum(), list(cu.parameters()))
    assert max((a - b).abs().max().item() for a, b in zip(p_ref, p_cu)) < 1e-10


# The README's example ("Equivariant layers in your own model"), verbatim.
from eqflow.nn import E3NNConv, RadialEmbedding, dense_edges  # noqa: E402


class ForceModel(torch.nn.Module):
    """Equivariant forces from positions and atom types with two E3NNConv layers."""

    def __init__(self, n_types, r_max=5.0):
        super().__init__()
        self.embed = torch.nn.Embedding(n_types, 16)
        self.sh = o3.SphericalHarmonics("1x0e + 1x1o + 1x2e", normalize=True, normalization="component")
        self.radial = RadialEmbedding(r_max, n_basis=8)
        conv1 = E3NNConv("16x0e", "16x0e + 8x1o", self.sh.irreps_out, n_basis=8)
        conv2 = E3NNConv(conv1.irreps_out, "16x0e + 8x1o", self.sh.irreps_out, n_basis=8)
        self.convs = torch.nn.ModuleList([conv1, conv2])
        self.out = o3.Linear(conv2.irreps_out, "1x1o")

    def forward(self, x, types):                      # x [B, N, 3], types [N] long
        b, n, _ = x.shape
        src, dst = dense_edges(b, n, x.device)        # or radius_edges(x, r_max)
        vec = x.reshape(-1, 3)[dst] - x.reshape(-1, 3)[src]
        sh, rad = self.sh(vec), self.radial(vec.norm(dim=-1))
        f = self.embed(types).repeat(b, 1)            # [B*N, 16] invariant node features
        for conv in self.convs:
            f = conv(f, sh, rad, src, dst, avg_num_neighbors=n - 1)
        return self.out(f).reshape(b, n, 3)           # [B, N, 3]


def test_readme_model_from_conv_layers(float64):
    torch.manual_seed(4)
    model = ForceModel(n_types=3)
    types = torch.tensor([0, 1, 2, 0, 1, 0])
    errors = assert_equivariant(lambda x: model(x, types), args_in=[torch.randn(2, N_ATOMS, 3)],
                                irreps_in=["cartesian_points"], irreps_out=["1o"], tolerance=1e-10)
    assert max(e.max().item() for e in errors.values()) < 1e-10
    forces = model(torch.randn(2, N_ATOMS, 3), types)
    forces.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
