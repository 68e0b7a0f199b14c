"""MolecularSystem / alanine_dipeptide: System settings, metadata and clear errors."""
import os

import numpy as np
import openmm
import pytest
import torch

from eqflow.geometry import chirality_sign
from eqflow.targets.molecular import MolecularSystem, alanine_dipeptide, alanine_dipeptide_pdb


def test_shipped_pdb_and_attribution():
    path = alanine_dipeptide_pdb()
    assert os.path.isfile(path)
    assert os.path.isfile(os.path.join(os.path.dirname(path), "SOURCE.md"))


@pytest.mark.parametrize("solvent,n_forces_min", [("vacuum", 4), ("implicit", 5)])
def test_alanine_dipeptide(solvent, n_forces_min):
    m = alanine_dipeptide(solvent, temperature=310.0, platform="Reference")
    assert m.n_atoms == 22 and m.positions.shape == (22, 3) and m.positions.dtype == torch.float64
    assert m.system.getNumConstraints() == 0
    names = [type(f).__name__ for f in m.system.getForces()]
    assert ("GBSAOBCForce" in names) == (solvent == "implicit")
    nb = [f for f in m.system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert m.dihedrals == {"phi": (4, 6, 8, 14), "psi": (6, 8, 14, 16)}
    assert m.chiral_centers == [(8, (6, 14, 10))]
    assert m.temperature == 310.0 and m.kT == pytest.approx(0.0083144626 * 310.0)
    assert m.masses.sum().item() == pytest.approx(144.17, abs=0.05)
    # Name-based types: 10 for alanine dipeptide, methyl hydrogens share one.
    assert m.n_atom_types == 10 and m.atom_types.shape == (22,)
    assert m.atom_types[11] == m.atom_types[12] == m.atom_types[13]
    assert m.atom_types[8] != m.atom_types[10]  # CA vs CB
    assert m.energy.atom_types is m.atom_types and m.energy.topology is m.topology
    assert np.isfinite(m.energy(m.positions[None]).item())
    # The shipped geometry is L-alanine: the sign eqflow.evaluation.chirality uses.
    assert chirality_sign(m.positions[None], 8, (6, 14, 10)).item() == 1.0


def test_element_types():
    m = alanine_dipeptide("vacuum", atom_types="element")
    assert m.atom_type_names == ["C", "H", "N", "O"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pdb"):
        MolecularSystem(str(tmp_path / "nope.pdb"))


def test_unknown_forcefield():
    with pytest.raises(ValueError, match="not_a_forcefield.xml"):
        MolecularSystem(alanine_dipeptide_pdb(), forcefield=("amber99sbildn.xml", "not_a_forcefield.xml"))


def test_unparametrizable_residue(tmp_path):
    text = open(alanine_dipeptide_pdb()).read().replace(" ALA X ", " XYZ X ")
    bad = tmp_path / "bad.pdb"
    bad.write_text(text)
    with pytest.raises(ValueError, match="XYZ"):
        MolecularSystem(str(bad))


def test_bad_solvent():
    with pytest.raises(ValueError, match="solvent"):
        alanine_dipeptide("explicit")


def test_registry():
    from eqflow.targets.registry import make_target

    e = make_target("ala2_implicit", platform="Reference")
    assert e.n_atoms == 22 and e.n_atom_types == 10
    import mdtraj

    x = torch.tensor(mdtraj.load(alanine_dipeptide_pdb()).xyz, dtype=torch.float64)
    assert torch.isfinite(e(x)).all()


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\x01", "binary"),
                                              (b"hello\nworld\n", "no ATOM")])
def test_empty_or_non_pdb_file_gives_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.pdb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        MolecularSystem(str(path))


def test_pdb_target_from_a_config():
    from eqflow.builders import build_target
    from eqflow.config import ConfigError, config_from_dict

    cfg = config_from_dict({"target": {"name": "pdb", "reference": None,
                                       "kwargs": {"pdb": alanine_dipeptide_pdb(), "solvent": "implicit",
                                                  "temperature": 300.0}}})
    energy = build_target(cfg)
    ref = alanine_dipeptide("implicit")
    x = ref.positions[None]
    assert torch.equal(energy(x), ref.energy(x))
    assert energy.chiral_signs == [1.0] and energy.dihedrals["phi"] == (4, 6, 8, 14)
    bad = config_from_dict({"target": {"name": "pdb", "reference": None, "kwargs": {"pdb": "/nope.pdb"}}})
    with pytest.raises(ConfigError, match="PDB file not found"):
        build_target(bad)
