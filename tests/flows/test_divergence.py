import pytest
import torch

from eqflow.flows import exact_divergence, hutchinson_divergence, sample_noise
from eqflow.flows.divergence import exact_divergence_looped
from eqflow.nn import EGNNField


def test_exact_divergence_equals_jacobian_trace(float64):
    torch.manual_seed(0)
    field = EGNNField(dim=3, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 5, 3, requires_grad=True)
    t = torch.rand(3)
    div = exact_divergence(field(t, x), x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda y: field(t[b:b + 1], y.view(1, 5, 3)).flatten(),
                                                 x[b].detach().flatten())
        assert div[b].item() == pytest.approx(torch.trace(jac).item(), abs=1e-10)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(float64, kind):
    torch.manual_seed(1)
    field = EGNNField(dim=3, hidden=16, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, 5, 3).expand(4000, 5, 3).clone().requires_grad_(True)
    v = field(torch.full((4000,), 0.3), x)
    noise = sample_noise(x.shape, kind, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    est = hutchinson_divergence(v, x, noise)
    x1 = x[:1].detach().requires_grad_(True)
    exact = exact_divergence(field(torch.full((1,), 0.3), x1), x1)[0]
    stderr = est.std() / 4000 ** 0.5
    assert abs(est.mean() - exact) < 4 * stderr + 1e-12
    if kind == "rademacher":
        assert set(noise.unique().tolist()) == {-1.0, 1.0}


def test_unknown_noise_named():
    with pytest.raises(ValueError, match="unknown Hutchinson noise 'uniform'"):
        sample_noise((2, 3), "uniform")


def _field(kind):
    torch.manual_seed(3)
    if kind == "egnn":
        field = EGNNField(dim=3, hidden=16, n_layers=2)
    else:
        from eqflow.nn import E3NNField
        field = E3NNField(n_scalars=8, hidden_irreps="8x0e + 4x1o", n_layers=1, lmax=1, n_basis=6,
                          radial_hidden=8)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return field


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 15, None])
def test_batched_exact_divergence_equals_loop(float64, kind, chunk_size):
    # N·dim = 15: chunks of 4 leave a remainder, 5 and 15 divide it, None is the default.
    field = _field(kind)
    x = torch.randn(3, 5, 3, requires_grad=True)
    t = torch.rand(3)
    v = field(t, x)
    ref_div, ref_fro = exact_divergence_looped(v, x, frobenius=True)
    div, fro = exact_divergence(v, x, frobenius=True, method="batched", chunk_size=chunk_size)
    assert torch.allclose(div, ref_div, rtol=0, atol=1e-10)
    assert torch.allclose(fro, ref_fro, rtol=0, atol=1e-10)
    assert torch.allclose(exact_divergence(v, x, method="batched", chunk_size=chunk_size), ref_div,
                          rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
def test_batched_exact_divergence_gradients_equal_loop(float64, kind):
    # Training through the exact divergence: create_graph, gradients in the parameters and in x.
    field = _field(kind)
    x = torch.randn(2, 5, 3, requires_grad=True)
    t = torch.rand(2)
    params = [p for p in field.parameters()]
    grads = []
    for method, chunk in (("loop", None), ("batched", 4), ("batched", 15)):
        v = field(t, x)
        div, fro = exact_divergence(v, x, create_graph=True, frobenius=True, method=method, chunk_size=chunk)
        loss = (div * torch.tensor([1.0, -2.0])).sum() + 0.1 * fro.sum()
        grads.append(torch.autograd.grad(loss, params + [x], allow_unused=True))
    for other in grads[1:]:
        for g_ref, g in zip(grads[0], other):
            if g_ref is None:
                assert g is None or not g.abs().max() > 0
                continue
            assert torch.allclose(g, g_ref, rtol=0, atol=1e-10)
    assert max(float(g.abs().max()) for g in grads[0] if g is not None) > 1e-3  # not trivially zero


def test_exact_divergence_arguments_named():
    x = torch.randn(2, 3, 3, requires_grad=True)
    v = x * 2
    with pytest.raises(ValueError, match="unknown exact-divergence method 'fast'"):
        exact_divergence(v, x, method="fast")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        exact_divergence(v, x, method="batched", chunk_size=0)
    assert torch.allclose(exact_divergence(v, x, method="batched", chunk_size=2), torch.full((2,), 18.0))
