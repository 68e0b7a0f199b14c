import math

import pytest
import torch

from eqflow import geometry as g


def test_remove_mean_and_check():
    x = torch.randn(5, 7, 3, dtype=torch.float64) + 3.0
    assert not g.is_com_free(x)
    y = g.remove_mean(x)
    assert g.is_com_free(y)
    with pytest.raises(ValueError, match="not CoM-free"):
        g.assert_com_free(x)


def test_check_positions_names_problem():
    with pytest.raises(ValueError, match=r"shape \[batch, n_atoms, dim\]"):
        g.check_positions(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="expected 5"):
        g.check_positions(torch.zeros(2, 4, 3), n_atoms=5)


def test_random_rotations_are_proper_and_orthogonal():
    gen = torch.Generator().manual_seed(0)
    r = g.random_rotations(100, generator=gen)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=torch.float64))
    q = g.random_orthogonal(2000, generator=gen)
    dets = torch.linalg.det(q)
    assert torch.allclose(dets.abs(), torch.ones_like(dets))
    # Haar on O(3): both components equally likely.
    assert 0.45 < (dets > 0).double().mean() < 0.55


def test_kabsch_recovers_rotation():
    gen = torch.Generator().manual_seed(1)
    ref = g.remove_mean(torch.randn(1, 10, 3, dtype=torch.float64, generator=gen))
    r = g.random_rotations(4, generator=gen)
    x = ref @ r.transpose(1, 2) + 2.0
    aligned = g.kabsch_align(x, ref[0])
    assert torch.allclose(aligned, ref.expand(4, -1, -1), atol=1e-10)


def test_chirality_sign_flips_under_reflection_not_rotation():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, 3, dtype=torch.float64, generator=gen)
    s = g.chirality_sign(x, 0, (1, 2, 3))
    r = g.random_rotations(6, generator=gen)
    assert torch.equal(g.chirality_sign(x @ r.transpose(1, 2), 0, (1, 2, 3)), s)
    assert torch.equal(g.chirality_sign(g.reflect(x), 0, (1, 2, 3)), -s)


def test_relative_coordinate_factor():
    assert g.log_volume_factor_relative(4, 2) == pytest.approx(math.log(4))
