import math

import numpy as np
import pytest
import torch

from eqflow.evaluation.modes import (DW4_MINIMA, alanine_mode_populations, basin_labels, contact_graph_labels,
                                     decode_contact_label, dw4_mode_labels, mode_populations)
from eqflow.geometry import random_orthogonal
from eqflow.targets import DoubleWell


def test_mode_populations_raw_and_reweighted():
    labels = np.array([0, 0, 1, 2, 2, 2])
    log_w = np.array([0.0, 0.0, math.log(2.0), -np.inf, 0.0, 0.0])  # -inf: weight 0
    pops = mode_populations(labels, log_w, modes=[0, 1, 2, 3])
    assert pops["counts"].tolist() == [2, 1, 3, 0]
    assert np.allclose(pops["raw"], [2 / 6, 1 / 6, 3 / 6, 0.0])
    assert np.allclose(pops["reweighted"], [2 / 6, 2 / 6, 2 / 6, 0.0])
    plain = mode_populations(torch.tensor([3, 1, 3]))
    assert plain["modes"].tolist() == [1, 3] and np.allclose(plain["raw"], [1 / 3, 2 / 3])
    assert plain["reweighted"] is None


def test_basin_labels_and_alanine_populations():
    deg = np.radians
    # beta (phi<0, psi 150), alphaR (-70, -40), alphaL (60, 40), C7ax (70, -70), beta again
    phi = deg(np.array([-80.0, -70.0, 60.0, 70.0, -150.0]))
    psi = deg(np.array([150.0, -40.0, 40.0, -70.0, -170.0]))
    assert basin_labels(phi, psi).tolist() == [0, 1, 2, 3, 0]
    log_w = np.log([1.0, 1.0, 4.0, 2.0, 2.0])
    pops = alanine_mode_populations(phi, psi, log_w)
    assert pops["phi>0"]["raw"] == pytest.approx(0.4) and pops["phi<0"]["raw"] == pytest.approx(0.6)
    assert pops["phi>0"]["reweighted"] == pytest.approx(0.6)
    assert pops["beta_C7eq"]["reweighted"] == pytest.approx(0.3)
    assert pops["alphaL"]["reweighted"] == pytest.approx(0.4)
    assert sum(pops[k]["raw"] for k in ("beta_C7eq", "alphaR", "alphaL", "C7ax")) == pytest.approx(1.0)
    assert alanine_mode_populations(phi, psi)["C7ax"]["reweighted"] is None


def test_contact_graph_label_is_invariant_and_decodes():
    # A path 0-1-2 of short pairs plus a far particle: degrees (0, 1, 1, 2).
    x = torch.tensor([[[0.0, 0.0], [2.5, 0.0], [5.0, 0.0], [0.0, 9.0]]], dtype=torch.float64)
    lab = contact_graph_labels(x, 4.0)
    assert decode_contact_label(lab[0], 4) == (0, 1, 1, 2)
    q = random_orthogonal(5, 2, generator=torch.Generator().manual_seed(0))
    moved = x[:, [3, 1, 0, 2]] @ q.transpose(-1, -2) + 7.0
    assert (contact_graph_labels(moved, 4.0) == lab[0]).all()
    assert decode_contact_label(contact_graph_labels(torch.zeros(1, 3, 3), 1.0)[0], 3) == (2, 2, 2)


def test_dw4_labels_separate_the_local_minima():
    # Minimize DW4 from random starts: every minimum found is one of DW4_MINIMA, with its energy.
    torch.manual_seed(1)
    target = DoubleWell()
    x = (3 * torch.randn(200, 4, 2, dtype=torch.float64)).requires_grad_()
    opt = torch.optim.LBFGS([x], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        e = target.energy(x).sum()
        e.backward()
        return e

    opt.step(closure)
    with torch.no_grad():
        energies = target.energy(x)
        labels = dw4_mode_labels(x)
    found = {decode_contact_label(lab, 4) for lab in labels}
    assert found <= set(DW4_MINIMA) and len(found) >= 3
    for lab, e in zip(labels, energies):
        assert e.item() == pytest.approx(DW4_MINIMA[decode_contact_label(lab, 4)], abs=0.01)


def test_training_mode_populations_dw4_and_lj():
    from eqflow.evaluation.modes import training_mode_populations
    from eqflow.targets import lj13
    target = DoubleWell()
    torch.manual_seed(0)
    x = torch.randn(300, 4, 2) * 2.5
    log_w = torch.randn(300)
    log_w[:5] = -float("inf")
    out = training_mode_populations(target, x, log_w)
    raw = {k.split("/")[1]: v for k, v in out.items() if k.startswith("pop_raw/")}
    rw = {k.split("/")[1]: v for k, v in out.items() if k.startswith("pop_rw/")}
    assert set(raw) == set(rw) == {"0112", "1223", "1111", "2233", "1113", "other"}
    assert abs(sum(raw.values()) - 1) < 1e-12 and abs(sum(rw.values()) - 1) < 1e-12
    labels = dw4_mode_labels(x)
    code = sum(d * 4 ** (3 - i) for i, d in enumerate((0, 1, 1, 2)))
    assert raw["0112"] == pytest.approx(np.mean(labels == code))
    assert training_mode_populations(lj13(), torch.randn(3, 13, 3)) == {}


def test_training_mode_populations_alanine_fold_reflections():
    from eqflow.evaluation.modes import training_mode_populations
    from eqflow.targets import make_target
    target = make_target("ala2_vacuum", n_workers=0)
    try:
        torch.manual_seed(0)
        x = target.positions[None] - target.positions.mean(0) + 0.01 * torch.randn(50, 22, 3, dtype=torch.float64)
        log_w = torch.randn(50, dtype=torch.float64)
        out = training_mode_populations(target, x, log_w)
        assert out["pop_raw/phi>0"] + out["pop_raw/phi<0"] == pytest.approx(1.0)
        assert out["pop_rw/phi>0"] + out["pop_rw/phi<0"] == pytest.approx(1.0)
        # A reflection-symmetric model's D samples are folded first: the mirror images count the same.
        assert training_mode_populations(target, -x, log_w) == pytest.approx(out)
        mirrored = training_mode_populations(target, -x, log_w, reflection_symmetric=False)
        assert mirrored["pop_raw/phi>0"] == pytest.approx(out["pop_raw/phi<0"])
    finally:
        target.close()
