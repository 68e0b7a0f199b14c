import pytest
import torch
from e3nn.util.test import assert_equivariant

from eqflow.geometry import random_orthogonal, remove_mean
from eqflow.nn import E3NNField, EGNNField, PairwiseField, ScaledField

N_ATOMS = 6
TYPES = torch.tensor([0, 0, 1, 1, 2, 0])  # atoms 0, 1, 5 are the same type


def make_field(kind, dim=3, n_features=3):
    torch.manual_seed(0)
    if kind == "egnn":
        field = EGNNField(dim=dim, n_node_features=n_features, hidden=16, n_layers=3)
    elif kind == "pairwise":
        field = PairwiseField(dim=dim, n_node_features=n_features, hidden=16, n_layers=2, n_basis=8, r_max=3.0)
    elif kind == "pairwise-env":  # with environment channels (one many-body step)
        field = PairwiseField(dim=dim, n_node_features=n_features, hidden=16, n_layers=2, n_basis=8, r_max=3.0,
                              n_env=4, aggregation="sum")
    else:
        field = E3NNField(n_node_features=n_features, n_scalars=8, hidden_irreps="8x0e + 4x1o + 2x2e",
                          n_layers=2, n_basis=6, r_max=4.0, radial_hidden=16)
    # Random, non-tiny weights so that equivariance is tested away from the near-identity init.
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return field


def features(b):
    return torch.nn.functional.one_hot(TYPES, 3).double()[None].expand(b, -1, -1)


@pytest.mark.parametrize("kind", ["egnn", "e3nn", "pairwise", "pairwise-env"])
def test_e3_equivariance_float64(float64, kind):
    field = make_field(kind)
    b = 4
    h = features(b)

    def f(t, x):
        return field(t[:, 0], x, h)

    args = [torch.rand(b, 1), torch.randn(b, N_ATOMS, 3)]
    errors = assert_equivariant(f, args_in=args, irreps_in=[None, "cartesian_points"], irreps_out=["1o"],
                                tolerance=1e-10, ntrials=3)
    assert max(e.max().item() for e in errors.values()) < 1e-10


def test_egnn_2d_orthogonal_and_translation(float64):
    field = make_field("egnn", dim=2)
    x, t, h = torch.randn(5, N_ATOMS, 2), torch.rand(5), features(5)
    q = random_orthogonal(5, 2, generator=torch.Generator().manual_seed(3))
    v = field(t, x, h)
    v_rot = field(t, x @ q.transpose(1, 2) + torch.randn(5, 1, 2), h)
    assert (v_rot - v @ q.transpose(1, 2)).abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["egnn", "e3nn", "pairwise", "pairwise-env"])
def test_permutation_of_same_type_atoms(float64, kind):
    field = make_field(kind)
    x, t, h = torch.randn(3, N_ATOMS, 3), torch.rand(3), features(3)
    perm = torch.tensor([5, 0, 2, 3, 4, 1])  # permutes the type-0 atoms 0, 1, 5 among themselves
    assert torch.equal(TYPES[perm], TYPES)
    v = field(t, x, h)
    assert (field(t, x[:, perm], h) - v[:, perm]).abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["egnn", "e3nn", "pairwise", "pairwise-env"])
def test_output_mean_free_and_trace_equals_subspace_divergence(float64, kind):
    field = make_field(kind)
    x = remove_mean(torch.randn(1, N_ATOMS, 3))
    t, h = torch.rand(1), features(1)
    v = field(t, x, h)
    assert v.mean(1).abs().max() < 1e-12
    jac = torch.autograd.functional.jacobian(lambda y: field(t, y.view(1, N_ATOMS, 3), h).flatten(), x.flatten())
    # Orthonormal basis of V = {sum_i x_i = 0}.
    p = torch.eye(N_ATOMS) - 1.0 / N_ATOMS
    q, _ = torch.linalg.qr(p[:, : N_ATOMS - 1])
    basis = torch.kron(q.contiguous(), torch.eye(3))
    div_v = torch.trace(basis.T @ jac @ basis)
    assert torch.trace(jac).item() == pytest.approx(div_v.item(), abs=1e-10)


def test_e3nn_rejects_2d():
    with pytest.raises(ValueError, match="3D only"):
        E3NNField(dim=2)


@pytest.mark.parametrize("kind", ["egnn", "e3nn", "pairwise", "pairwise-env"])
def test_bad_shapes_named(kind):
    field = make_field(kind)
    with pytest.raises(ValueError, match=r"\[batch, n_atoms, dim\]"):
        field(torch.rand(2), torch.randn(2, 18))
    with pytest.raises(ValueError, match="node features"):
        field(torch.rand(2), torch.randn(2, N_ATOMS, 3), torch.randn(2, N_ATOMS, 5))
    with pytest.raises(ValueError, match="t must be"):
        field(torch.rand(3), torch.randn(2, N_ATOMS, 3), features(2).float())


def test_field_inside_user_model():
    # The README's example: an equivariant force predictor built on EGNNField.
    class ForceModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.field = EGNNField(dim=3, n_node_features=3, hidden=16, n_layers=2)

        def forward(self, x, h):
            return self.field(torch.zeros(x.shape[0]), x, h)

    model = ForceModel()
    x, h = torch.randn(8, N_ATOMS, 3), features(8).float()
    target = torch.randn(8, N_ATOMS, 3)
    loss = (model(x, h) - remove_mean(target)).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_egnn_sum_aggregation_equivariant_and_checked(float64):
    torch.manual_seed(1)
    field = EGNNField(dim=3, n_node_features=3, hidden=16, n_layers=2, coord_aggregation="sum")
    h = features(2)
    assert_equivariant(lambda t, x: field(t[:, 0], x, h), args_in=[torch.rand(2, 1), torch.randn(2, N_ATOMS, 3)],
                       irreps_in=[None, "cartesian_points"], irreps_out=["1o"], tolerance=1e-10)
    with pytest.raises(ValueError, match="coord_aggregation"):
        EGNNField(coord_aggregation="max")


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("kind", ["pairwise", "pairwise-env"])
def test_pairwise_closed_form_divergence_equals_the_jacobian_trace(float64, dim, scaled, kind):
    field = make_field(kind, dim=dim)
    if scaled:
        field = ScaledField(field, 0.1)  # molecules in nm: the scale cancels in the divergence
    b = 3
    x, t, h = torch.randn(b, N_ATOMS, dim), torch.rand(b), features(b)
    x[:, 1] = x[:, 0] + 1e-3  # a close pair: the radial derivative at short range
    v, div = field.velocity_and_divergence(t, x, h)
    assert not v.requires_grad and not div.requires_grad  # nothing kept when only evaluating
    assert torch.equal(v, field(t, x, h))
    for i in range(b):
        jac = torch.autograd.functional.jacobian(
            lambda y: field(t[i:i + 1], y.view(1, N_ATOMS, dim), h[i:i + 1]).flatten(), x[i].flatten())
        assert div[i].item() == pytest.approx(torch.trace(jac).item(), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("kind", ["pairwise", "pairwise-env"])
def test_pairwise_divergence_keeps_the_graph_for_training(float64, kind):
    field = make_field(kind)
    x, t, h = torch.randn(2, N_ATOMS, 3, requires_grad=True), torch.rand(2), features(2)
    _, div = field.velocity_and_divergence(t, x, h, create_graph=True)
    grads = torch.autograd.grad(div.sum(), [x, *field.parameters()], allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:2])
    # d(div)/dx by autograd through the closed form equals the finite difference of the closed form
    e = torch.zeros_like(x)
    e[0, 2, 1] = 1e-6
    d_plus = field.velocity_and_divergence(t, x.detach() + e, h)[1][0]
    d_minus = field.velocity_and_divergence(t, x.detach() - e, h)[1][0]
    assert grads[0][0, 2, 1].item() == pytest.approx(((d_plus - d_minus) / 2e-6).item(), rel=1e-6)


def test_bond_hop_features_of_a_chain_and_an_isolated_atom():
    from eqflow.nn import bond_hop_features
    f = bond_hop_features(6, [(0, 1), (1, 2), (2, 3), (3, 4)], max_hops=2)  # atom 5 bonded to nothing
    cls = f.argmax(-1)
    assert f.shape == (6, 6, 3) and torch.equal(f, f.transpose(0, 1))
    assert f[range(6), range(6)].abs().sum() == 0  # no self-pairs
    assert cls[0, 1] == 0 and cls[0, 2] == 1 and cls[0, 3] == 2 and cls[0, 4] == 2 and cls[0, 5] == 2
    with pytest.raises(ValueError, match="max_hops"):
        bond_hop_features(3, [(0, 1)], max_hops=0)


def test_pairwise_field_with_pair_features_divergence_and_permutations(float64):
    from eqflow.nn import bond_hop_features
    bonds = [(0, 1), (1, 2), (2, 3), (3, 4), (3, 5)]  # atoms 4 and 5: the same type, both bonded to 3
    torch.manual_seed(1)
    field = PairwiseField(dim=3, n_node_features=3, hidden=16, n_layers=2, n_basis=8, r_max=3.0,
                          pair_features=bond_hop_features(N_ATOMS, bonds, 3))
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    types = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0, 0]), 3).double()[None].expand(2, -1, -1)
    x, t = torch.randn(2, N_ATOMS, 3), torch.rand(2)
    v, div = field.velocity_and_divergence(t, x, types)
    jac = torch.autograd.functional.jacobian(lambda y: field(t[:1], y.view(1, N_ATOMS, 3), types[:1]).flatten(),
                                             x[0].flatten())
    assert div[0].item() == pytest.approx(torch.trace(jac).item(), rel=1e-10)
    perm = torch.tensor([0, 1, 2, 3, 5, 4])  # a symmetry of the typed bond graph
    assert (field(t, x[:, perm], types) - v[:, perm]).abs().max() < 1e-10
    with pytest.raises(ValueError, match="for 6 atoms"):
        field(t, torch.randn(2, 5, 3), types[:, :5])
    with pytest.raises(ValueError, match="symmetric"):
        PairwiseField(pair_features=torch.rand(4, 4, 2))


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
@pytest.mark.parametrize("n_env", [0, 3])
def test_pairwise_speed_is_bounded_by_the_gain_whatever_the_weights(float64, aggregation, n_env):
    field = PairwiseField(dim=3, hidden=8, n_layers=1, n_basis=4, r_max=3.0, gain=0.5, aggregation=aggregation,
                          n_env=n_env)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(0.0).add_(50.0 * torch.randn_like(p))  # huge weights: tanh saturates
    x = 10.0 * torch.randn(16, N_ATOMS, 3)
    speed = field(torch.rand(16), x).norm(dim=-1)
    bound = 0.5 if aggregation == "mean" else 0.5 * (N_ATOMS - 1)
    assert speed.max() <= bound
    assert speed.max() > 0.2 * bound  # saturated, not vanishing
    _, div = field.velocity_and_divergence(torch.rand(16), x)
    assert torch.isfinite(div).all()
    with pytest.raises(ValueError, match="aggregation"):
        PairwiseField(aggregation="max")
    with pytest.raises(ValueError, match="n_env"):
        PairwiseField(n_env=-1)


def test_pairwise_environment_is_each_atoms_smoothed_radial_distribution(float64):
    """The environment channels by hand, and a field that reads them: the same pair at the same distance
    moves differently when a third atom comes close to one end of it (what n_env = 0 cannot do)."""
    field = PairwiseField(dim=2, hidden=8, n_layers=1, n_basis=4, r_max=3.0, n_env=3, aggregation="sum")
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    diff, r, pairs = field._pairs(x)
    ei, ej = field._environment(r, pairs)  # pairs (0, 1), (0, 2), (1, 2)
    env = torch.stack([ei[0, 0], ej[0, 0], ej[0, 2]])  # atoms 0, 1, 2
    centers, width = torch.tensor([0.0, 1.5, 3.0]), 1.5
    g = lambda d: torch.exp(-0.5 * ((d - centers) / width) ** 2)  # noqa: E731
    d01, d02, d12 = 1.0, 2.0, 5.0 ** 0.5
    expected = torch.stack([g(d01) + g(d02), g(d01) + g(d12), g(d02) + g(d12)]) / 2
    assert torch.allclose(env, expected, atol=1e-12)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    far = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]])  # atom 2 moved away: pair (0, 1) unchanged
    plain = PairwiseField(dim=2, hidden=8, n_layers=1, n_basis=4, r_max=3.0, aggregation="sum")
    t = torch.tensor([0.5])

    def phi_01(f, y):  # φ of the pair (0, 1), the first of the pairs i < j
        diff, r, pairs = f._pairs(y)
        return f._phi(t, r, None, pairs, f._environment(r, pairs) if f.n_env else None)[0, 0]

    assert phi_01(plain, x) == phi_01(plain, far)
    assert (phi_01(field, x) - phi_01(field, far)).abs() > 1e-6
