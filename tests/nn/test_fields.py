import pytest
import torch
from e3nn.util.test import assert_equivariant

from eqflow.geometry import random_orthogonal, remove_mean
from eqflow.nn import E3NNField, EGNNField

N_ATOMS = 6
TYPES = torch.tensor([0, 0, 1, 1, 2, 0])  # atoms 0, 1, 5 are the same type


def make_field(kind, dim=3, n_features=3):
    torch.manual_seed(0)
    if kind == "egnn":
        field = EGNNField(dim=dim, n_node_features=n_features, hidden=16, n_layers=3)
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


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
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


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
def test_permutation_of_same_type_atoms(float64, kind):
    field = make_field(kind)
    x, t, h = torch.randn(3, N_ATOMS, 3), torch.rand(3), features(3)
    perm = torch.tensor([5, 0, 2, 3, 4, 1])  # permutes the type-0 atoms 0, 1, 5 among themselves
    assert torch.equal(TYPES[perm], TYPES)
    v = field(t, x, h)
    assert (field(t, x[:, perm], h) - v[:, perm]).abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
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


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
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
