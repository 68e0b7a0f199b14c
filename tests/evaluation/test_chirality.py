"""Chirality folding: reflect D samples, log q + log 2, D fraction."""
import math

import torch

from eqflow.evaluation.chirality import d_fraction, fold_to_l, l_sign
from eqflow.geometry import chirality_sign, random_rotations, remove_mean
from eqflow.targets.molecular import alanine_dipeptide


def test_l_sign_from_shipped_pdb():
    assert l_sign() == 1.0


def test_fold():
    m = alanine_dipeptide("vacuum")
    x = remove_mean(m.positions[None].repeat(6, 1, 1))
    x = x @ random_rotations(6).transpose(-1, -2)
    x[::2] = -x[::2]  # three D samples
    log_q = torch.randn(6, dtype=torch.float64)
    x_l, log_q_l, frac = fold_to_l(x, log_q)
    assert frac == 0.5 and d_fraction(x) == 0.5
    assert (chirality_sign(x_l, 8, (6, 14, 10)) == 1).all()
    torch.testing.assert_close(x_l[::2], -x[::2])
    torch.testing.assert_close(x_l[1::2], x[1::2])
    torch.testing.assert_close(log_q_l, log_q + math.log(2))
    assert x_l.mean(dim=1).abs().max() < 1e-12
    # The folded set has the same energies (a reflection keeps every distance).
    torch.testing.assert_close(m.energy(x_l), m.energy(x))
    _, none, _ = fold_to_l(x)
    assert none is None
    # An explicit opposite reference sign folds the other way.
    x_d, _, frac_d = fold_to_l(x, reference_sign=-1.0)
    assert frac_d == 0.5 and (chirality_sign(x_d, 8, (6, 14, 10)) == -1).all()


def test_fold_to_reference_every_centre():
    import math

    import torch

    from eqflow.evaluation.chirality import fold_to_reference
    from eqflow.geometry import chirality_sign
    from eqflow.targets.molecular import alanine_dipeptide

    mol = alanine_dipeptide("vacuum")
    assert mol.chiral_signs == [1.0] and mol.energy.chiral_signs == [1.0]  # L-alanine, from its own PDB
    x = mol.positions[None].repeat(4, 1, 1) - mol.positions.mean(0)
    x[1::2] = -x[1::2]  # two D copies
    lq = torch.zeros(4, dtype=torch.float64)
    xf, lqf, stats = fold_to_reference(x, lq, mol.chiral_centers, mol.chiral_signs)
    assert stats["d_fraction"] == 0.5 and stats["stereo_mismatch_fraction"] == 0.0
    assert (chirality_sign(xf, *mol.chiral_centers[0]) == 1).all()
    assert torch.allclose(lqf, lq + math.log(2.0))
    # Two centres (a made-up second one): a diastereomer is folded by the first and counted as a mismatch.
    centers = [mol.chiral_centers[0], (14, (8, 15, 16))]
    s2 = float(chirality_sign(x[:1], 14, (8, 15, 16))[0])
    xf, _, stats = fold_to_reference(x, None, centers, [1.0, -s2])
    assert stats["d_fraction"] == 0.0 and stats["stereo_mismatch_fraction"] == 1.0
