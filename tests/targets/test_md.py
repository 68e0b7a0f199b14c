"""Reference MD: plain Langevin, replica exchange, checkpoint/resume, readable output."""
import json
import os

import mdtraj
import numpy as np
import pytest

from eqflow.targets.md import REMDConfig, run_replica_exchange, sidecar_paths, temperature_ladder
from eqflow.targets.molecular import alanine_dipeptide


@pytest.fixture(scope="module")
def mol():
    return alanine_dipeptide("vacuum", platform="Reference")


def _cfg(**kw):
    base = dict(temperatures=[300.0, 400.0, 550.0], n_steps=400, equilibration_steps=100,
                save_interval=100, exchange_interval=50, checkpoint_interval=100, seed=3)
    base.update(kw)
    return REMDConfig(**base)


def test_ladder():
    t = temperature_ladder(300, 600, 3)
    np.testing.assert_allclose(t, [300, 300 * 2 ** 0.5, 600])
    assert temperature_ladder(300, 600, 1).tolist() == [300]
    with pytest.raises(ValueError):
        _cfg(save_interval=75).validate()


def test_replica_exchange_output_and_resume(mol, tmp_path):
    pytest.importorskip("tables")
    out = str(tmp_path / "full.h5")
    meta = run_replica_exchange(mol.system, mol.topology, mol.positions.numpy(), out, _cfg(),
                                metadata={"solvent": "vacuum"}, progress=False)
    assert meta["n_frames"] == 4 and len(meta["exchange_attempts"]) == 2
    assert sum(meta["exchange_attempts"]) == (400 + 100) // 50  # one pair set per cycle
    t = mdtraj.load(out)
    assert t.n_frames == 4 and t.n_atoms == 22
    npz, js = sidecar_paths(out)
    with np.load(npz) as d:
        assert d["positions"].shape == (4, 22, 3)
        np.testing.assert_allclose(d["energies"], d["energies_kj"] / (0.0083144626 * 300), rtol=1e-12)
        np.testing.assert_allclose(d["positions"], t.xyz, atol=1e-5)
        # Stored reduced energies are those of the stored positions.
        u = mol.energy(__import__("torch").from_numpy(d["positions"])).numpy()
        np.testing.assert_allclose(u, d["energies"], rtol=1e-8)
    assert json.load(open(js))["solvent"] == "vacuum"

    # Interrupted after 4 cycles, then resumed: same frame count, identical frames before the stop.
    out2 = str(tmp_path / "resumed.h5")
    assert run_replica_exchange(mol.system, mol.topology, mol.positions.numpy(), out2, _cfg(),
                                progress=False, stop_after_cycles=4) is None
    assert not os.path.exists(out2) and os.path.exists(str(tmp_path / "resumed.ckpt.npz"))
    meta2 = run_replica_exchange(mol.system, mol.topology, mol.positions.numpy(), out2, _cfg(),
                                 resume=True, progress=False)
    assert meta2["resumed"] and meta2["n_frames"] == 4
    assert sum(meta2["exchange_attempts"]) == sum(meta["exchange_attempts"])
    np.testing.assert_array_equal(mdtraj.load(out2).xyz[0], t.xyz[0])
    with pytest.raises(ValueError, match="another configuration"):
        run_replica_exchange(mol.system, mol.topology, mol.positions.numpy(), out2,
                             _cfg(n_steps=800), resume=True, progress=False)


def test_single_replica_dcd(mol, tmp_path):
    out = str(tmp_path / "plain.dcd")
    meta = run_replica_exchange(mol.system, mol.topology, mol.positions.numpy(), out,
                                _cfg(temperatures=[300.0], n_steps=200), progress=False)
    assert meta["n_frames"] == 2 and meta["exchange_attempts"] == []
    assert mdtraj.load(out, top=mol.topology).n_frames == 2


def test_script_runs(tmp_path):
    pytest.importorskip("tables")
    out = str(tmp_path / "s.h5")
    import importlib.util

    # In-process (the script is thin): a subprocess would spend its time importing torch.
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "simulate_md.py")
    spec = importlib.util.spec_from_file_location("simulate_md", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--solvent", "implicit", "--replicas", "2", "--tmax", "400", "--ns", "0.0004",
                     "--equil-ps", "0.1", "--save-ps", "0.1", "--exchange-ps", "0.05",
                     "--output", out, "--no-progress"]) == 0
    from eqflow.evaluation.trajectory import load_md_reference

    ref = load_md_reference(out)
    assert ref.positions.shape == (4, 22, 3)
    assert ref.meta["solvent"] == "implicit" and ref.meta["forcefield"][-1] == "amber96_obc.xml"
