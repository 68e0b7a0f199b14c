import math

import pytest
import torch

from eqflow.geometry import random_rotations
from eqflow.targets import TARGETS, DoubleWell, LennardJones, lj13, lj55, make_target
from eqflow.targets.mcmc import initial_particle_positions



@pytest.fixture(autouse=True)
def float64_default():
    # Scoped to this module's tests so the rest of the suite keeps float32 as default.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def dw_pair(d, a=0.0, b=-4.0, c=0.9, d0=4.0):
    s = d - d0
    return a * s + b * s ** 2 + c * s ** 4


def lj_pair(d):
    return d ** -12 - 2 * d ** -6


def test_double_well_two_particles():
    x = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
    e = DoubleWell(n_particles=2)
    assert e.energy(x).item() == pytest.approx(dw_pair(3.0))  # -4 + 0.9 = -3.1


def test_double_well_unique_pairs_and_tau():
    # Right triangle 3-4-5 plus a point: 6 pairs, each counted once.
    pts = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [3.0, 4.0]])
    d = torch.pdist(pts)
    expected = sum(dw_pair(float(v), a=0.5) for v in d)
    e = DoubleWell(a=0.5)
    assert e.energy(pts[None]).item() == pytest.approx(expected)
    assert DoubleWell(a=0.5, tau=2.0).energy(pts[None]).item() == pytest.approx(expected / 2)


def test_lennard_jones_minimum_and_pairs():
    e = LennardJones(2, oscillator=False)
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    assert e.energy(x).item() == pytest.approx(-1.0)  # pair minimum -eps at d = rm
    # Equilateral triangle of side 1.2: three pairs, no double counting.
    s = 1.2
    tri = torch.tensor([[[0.0, 0.0, 0.0], [s, 0.0, 0.0], [s / 2, s * math.sqrt(3) / 2, 0.0]]])
    assert LennardJones(3, oscillator=False).energy(tri).item() == pytest.approx(3 * lj_pair(s))


def test_lennard_jones_oscillator_and_params():
    x = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]]) + 5.0  # translation does not matter
    e = LennardJones(2, eps=2.0, rm=1.5, oscillator_scale=3.0)
    r = 2.0 / 1.5
    expected = 2.0 * (r ** -12 - 2 * r ** -6) + 0.5 * 3.0 * (1.0 + 1.0)
    assert e.energy(x).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_forces_match_finite_differences(name):
    target = make_target(name)
    gen = torch.Generator().manual_seed(0)
    spacing = 3.0 if target.dim == 2 else 1.1
    x = initial_particle_positions(target.n_atoms, target.dim, 3, spacing, jitter=0.1, generator=gen)
    f = target.force(x)
    h = 1e-6
    fd = torch.zeros_like(x)
    for i in range(target.n_atoms):
        for k in range(target.dim):
            dx = torch.zeros_like(x)
            dx[:, i, k] = h
            fd[:, i, k] = -(target.energy(x + dx) - target.energy(x - dx)) / (2 * h)
    torch.testing.assert_close(f, fd, rtol=1e-5, atol=1e-5)


def test_invariance():
    gen = torch.Generator().manual_seed(1)
    e = lj13()
    x = initial_particle_positions(13, 3, 4, 1.1, generator=gen)
    rot = random_rotations(4, 3, generator=gen)
    y = x @ rot.transpose(-1, -2) + torch.randn(4, 1, 3, generator=gen)
    y = y[:, torch.randperm(13, generator=gen)]
    torch.testing.assert_close(e.energy(x), e.energy(y))


def test_overlap_gives_inf_not_nan():
    x = torch.zeros(2, 13, 3)
    x[1] = torch.randn(13, 3)
    x[1, 1] = x[1, 0]
    u = lj13().energy(x)
    assert torch.isposinf(u).all()
    u32 = lj13().energy(x.float())
    assert torch.isposinf(u32).all()
    # Double well is finite at d = 0.
    assert torch.isfinite(DoubleWell().energy(torch.zeros(1, 4, 2))).all()


def test_wrong_shapes_raise():
    with pytest.raises(ValueError):
        DoubleWell().energy(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError):
        DoubleWell().energy(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError):
        lj13().energy(torch.zeros(13, 3))


def test_registry():
    assert make_target("dw4").n_atoms == 4
    assert make_target("LJ13").n_atoms == 13
    assert lj55().n_atoms == 55 and make_target("lj55", oscillator=False).oscillator is False
    with pytest.raises(ValueError, match="dw4.*lj13.*lj55"):
        make_target("lj99")
    TARGETS["tmp_test"] = lambda **kw: DoubleWell(n_particles=3, **kw)
    try:
        assert make_target("tmp_test").n_atoms == 3
    finally:
        del TARGETS["tmp_test"]
