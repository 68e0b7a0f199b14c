"""Ramachandran angles, basin populations, ΔF, histogram KL and plots."""
import math

import numpy as np
import pytest
import torch

from eqflow.evaluation.ramachandran import (basin_masks, delta_f, mode_populations, phi_psi,
                                            plot_ramachandran, ramachandran_kl)
from eqflow.geometry import random_rotations
from eqflow.targets.molecular import alanine_dipeptide


def _dihedral(p):
    b0, b1, b2 = p[0] - p[1], p[2] - p[1], p[3] - p[2]
    b1n = b1 / np.linalg.norm(b1)
    v, w = b0 - b0 @ b1n * b1n, b2 - b2 @ b1n * b1n
    return math.atan2(np.cross(b1n, v) @ w, v @ w)


def test_phi_psi_matches_direct_formula_and_is_invariant():
    m = alanine_dipeptide("vacuum")
    x = m.positions[None].repeat(3, 1, 1).clone()
    x[1] = x[1] @ random_rotations(1)[0].T + 0.3
    phi, psi = phi_psi(x, m.topology)
    ref_phi = _dihedral(m.positions.numpy()[list(m.dihedrals["phi"])])
    ref_psi = _dihedral(m.positions.numpy()[list(m.dihedrals["psi"])])
    np.testing.assert_allclose(phi, ref_phi, atol=1e-5)
    np.testing.assert_allclose(psi, ref_psi, atol=1e-5)
    # A reflection flips the sign of every dihedral (why D samples must be folded).
    phi_r, _ = phi_psi(-x)
    np.testing.assert_allclose(phi_r, -phi, atol=1e-5)


def test_basins_partition():
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 1000))
    m = basin_masks(phi, psi)
    assert (m["phi>0"] ^ m["phi<0"]).all()
    parts = m["beta_C7eq"].astype(int) + m["alphaR"] + m["alphaL"] + m["C7ax"]
    assert (parts == 1).all()
    assert basin_masks(np.radians([-80.0]), np.radians([150.0]))["beta_C7eq"][0]
    assert basin_masks(np.radians([-70.0]), np.radians([-40.0]))["alphaR"][0]
    assert basin_masks(np.radians([60.0]), np.radians([40.0]))["alphaL"][0]
    assert basin_masks(np.radians([75.0]), np.radians([-65.0]))["C7ax"][0]


def test_populations_and_delta_f():
    rng = np.random.default_rng(1)
    n = 4000
    phi = np.where(rng.random(n) < 0.2, 1.0, -1.0) + 0.1 * rng.standard_normal(n)
    psi = rng.uniform(-np.pi, np.pi, n)
    pops = mode_populations(phi, psi, n_bootstrap=100)
    p, s = pops["phi>0"]
    assert abs(p - 0.2) < 4 * s + 0.01 and 0 < s < 0.02
    assert pops["phi<0"][0] == pytest.approx(1 - p)
    df, err = delta_f(phi, n_bootstrap=100)
    assert df == pytest.approx(-math.log(p / (1 - p)))
    assert 0 < err < 0.2
    # Weights: doubling the weight of phi>0 samples shifts ΔF by -ln 2.
    w = np.where(phi > 0, 2.0, 1.0)
    df_w, _ = delta_f(phi, torch.tensor(w), n_bootstrap=0)
    assert df_w == pytest.approx(df - math.log(2))
    assert delta_f(-np.abs(phi), n_bootstrap=10)[0] == math.inf
    with pytest.raises(ValueError):
        delta_f(phi, -w)


def test_kl():
    rng = np.random.default_rng(2)
    a = rng.uniform(-np.pi, np.pi, (2, 5000))
    b = rng.uniform(-np.pi, np.pi, (2, 5000))
    assert ramachandran_kl(a[0], a[1], None, a[0], a[1]) == pytest.approx(0, abs=1e-4)
    small = ramachandran_kl(a[0], a[1], None, b[0], b[1])
    far = ramachandran_kl(0.1 * a[0], 0.1 * a[1], None, b[0], b[1])
    assert 0 < small < 0.5 < far


def test_plot(tmp_path):
    rng = np.random.default_rng(3)
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 500))
    path = plot_ramachandran({"model": (phi, psi, None), "reweighted": (phi, psi, rng.random(500)),
                              "reference": (phi, psi, None)}, str(tmp_path / "rama.png"))
    assert (tmp_path / "rama.png").stat().st_size > 1000 and path.endswith("rama.png")


def test_block_bootstrap_sees_correlation():
    # A series that switches basin every 100 frames: iid bootstrap underestimates the error.
    phi = np.repeat(np.where(np.arange(40) % 4 == 0, 1.0, -1.0), 100)
    _, iid = delta_f(phi, n_bootstrap=200)
    _, blk = delta_f(phi, n_bootstrap=200, block=100)
    assert blk > 3 * iid
    p = mode_populations(phi, np.zeros_like(phi), n_bootstrap=50, block=100)["phi>0"]
    assert p[0] == 0.25 and p[1] > 0.03
