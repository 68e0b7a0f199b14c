"""scripts/compare_ic.py end to end on CPU: both models train on the same budget, one table, one figure."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from eqflow.distributions import save_reference
from eqflow.geometry import remove_mean
from eqflow.targets.molecular import alanine_dipeptide

ROOT = Path(__file__).resolve().parents[1]


def test_compare_ic_end_to_end(tmp_path):
    mol = alanine_dipeptide("implicit")
    torch.manual_seed(0)
    x = remove_mean(mol.positions[None] + 0.004 * torch.randn(60, 22, 3, dtype=torch.float64))
    ref = tmp_path / "ref.npz"
    save_reference(ref, x, mol.energy(x), meta={"system": "ala2_implicit", "temperature": 300.0})
    common = [f"target.reference={ref}", "target.kwargs.n_workers=0", "train.batch_size=8", "train.ml_batch_size=8",
              "eval.n_samples=40", "eval.batch_size=40", "eval.nll_samples=10", "eval.solver_check=8",
              "eval.val_every=0", "flow.n_steps=2", "field.hidden=8", "field.n_layers=1", "model.ic_layers=2",
              "model.ic_hidden=16"]
    out = tmp_path / "cmp"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_ic.py"), "--minutes", "0.05", "--out", str(out),
                        "--n-samples", "40", "--set", *common], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout
    for label in ("ESS", "NLL on MD reference", "ΔF(phi) reweighted", "Ramachandran KL", "fraction of D samples",
                  "P(phi>0) raw", "P(alphaR) reweighted", "seconds per training step", "samples/s with log weights",
                  "energy evaluations"):
        assert label in table, table
    res = json.loads((out / "comparison.json").read_text())
    assert res["ic"]["model"] == "ICFlow" and res["eqflow"]["model"] == "MixtureFlow"
    assert res["ic"]["folded"] is False and res["eqflow"]["folded"] is True
    assert res["ic"]["d_fraction"] == 0.0
    for m in res.values():  # the evaluation itself reports |ΔF error| against the MD reference
        assert m["delta_f_error"] == abs(m["delta_f_reweighted"] - m["ref_delta_f"]) or not math.isfinite(m["delta_f_error"])
    assert res["ic"]["steps"] >= 1 and res["eqflow"]["steps"] >= 1
    assert (out / "ramachandran_compare.png").stat().st_size > 0
