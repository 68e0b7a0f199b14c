"""Molecular targets from a PDB file and OpenMM force-field files (alanine dipeptide and any other).

The System is built with ``NoCutoff``, no constraints and flexible water, because generated samples
are scored with every degree of freedom free. Implicit solvent is one more force-field file
(e.g. ``amber96_obc.xml``).
"""
from __future__ import annotations

import os
import re
from importlib import resources

import numpy as np
import torch

from .openmm_bridge import OpenMMEnergy, kT_kj_per_mol

__all__ = ["MolecularSystem", "alanine_dipeptide", "pdb_system", "alanine_dipeptide_pdb", "ALA2_PHI", "ALA2_PSI",
           "ALA2_CHIRAL_CENTER", "IMPLICIT_SOLVENT_XML"]

ALA2_PHI = (4, 6, 8, 14)
ALA2_PSI = (6, 8, 14, 16)
ALA2_CHIRAL_CENTER = (8, (6, 14, 10))  # CA with N, C, CB
IMPLICIT_SOLVENT_XML = "amber96_obc.xml"


def alanine_dipeptide_pdb() -> str:
    """Path of the alanine dipeptide PDB shipped in ``eqflow/data`` (attribution in SOURCE.md there)."""
    name = "alanine-dipeptide-nowater.pdb"
    try:
        path = str(resources.files("eqflow").joinpath("data", name))
    except (NotADirectoryError, TypeError):  # e.g. a stale editable install that sees a namespace
        path = ""
    if not os.path.isfile(path):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", name)
    return path


def _load_forcefield(files: tuple[str, ...]):
    import openmm.app as app

    for f in files:
        try:
            app.ForceField(f)
        except ValueError as err:  # OpenMM: 'Could not locate file "..."'
            raise ValueError(f"unknown force-field file {f!r} ({err}); give an OpenMM force-field "
                             "name such as 'amber99sbildn.xml' or a path to an XML file") from None
    return app.ForceField(*files)


def _read_pdb(pdb_path: str):
    """``openmm.app.PDBFile`` of ``pdb_path``, or a one-line ValueError for an empty or non-PDB file."""
    import openmm.app as app

    with open(pdb_path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise ValueError(f"PDB file {pdb_path} is empty")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{pdb_path} is not a PDB file (binary content)") from None
    if not any(line[:6].strip() in ("ATOM", "HETATM") for line in text.splitlines()):
        raise ValueError(f"{pdb_path} is not a PDB file: no ATOM or HETATM records")
    try:
        pdb = app.PDBFile(pdb_path)
    except Exception as err:  # OpenMM's parser raises assorted types on malformed records
        raise ValueError(f"{pdb_path} is not a readable PDB file: {type(err).__name__}: {err}") from None
    if pdb.topology.getNumAtoms() == 0:
        raise ValueError(f"PDB file {pdb_path} has no atoms")
    return pdb


def _atom_type_names_by_name(pdb_path: str) -> list[str]:
    """One type name per atom from the PDB's own atom names (not OpenMM's renamed ones).

    A trailing digit is dropped where it enumerates a group inside a residue (HB1, HB2, HB3 -> HB;
    HH31.. -> HH3), so equivalent atoms share a type; names such as CH3 with no siblings are kept.
    """
    import mdtraj

    top = mdtraj.load_pdb(pdb_path, standard_names=False).topology
    out = []
    for res in top.residues:
        names = [a.name for a in res.atoms]
        for name in names:
            m = re.fullmatch(r"(.+?)(\d)", name)
            if m and sum(1 for o in names if re.fullmatch(re.escape(m.group(1)) + r"\d", o)) > 1:
                name = m.group(1)
            out.append(name)
    return out


def _template_error(ff, topology, forcefield, pdb_path: str, msg: str) -> str:
    """Name the residues the force field cannot match, unknown residue names first.

    OpenMM reports the first residue that fails, which is often a neighbour of the real culprit
    (an unknown residue gets no bonds, so the capping group next to it fails first).
    """
    import openmm.app as app

    try:
        unmatched = ff.getUnmatchedResidues(topology)
    except Exception:  # pragma: no cover - defensive: fall back to OpenMM's own message
        unmatched = []
    known = set(getattr(ff, "_templates", {})) | set(getattr(app.Topology, "_standardBonds", {}))
    unknown = [r for r in unmatched if r.name not in known]
    listed = ", ".join(f"{r.name} (residue {r.index})" for r in (unknown or unmatched)) or "?"
    what = "unknown residue name(s)" if unknown else "residue(s) without a matching template"
    return (f"force field {list(forcefield)} cannot parametrize {pdb_path}: {what}: {listed}. "
            "Check residue names, missing hydrogens or capping groups, or add a force-field file that "
            f"defines them. OpenMM said: {msg}")


class MolecularSystem:
    """A molecule from a PDB file scored with OpenMM: energy bridge, topology and metadata.

    Parameters
    ----------
    pdb_path : str
        PDB file (hydrogens included).
    forcefield : tuple of str
        OpenMM force-field files, e.g. ``("amber99sbildn.xml",)``; add ``"amber96_obc.xml"`` for implicit
        solvent (or use ``implicit_solvent=True``).
    temperature : float
        K.
    n_workers, platform, cpu_threads, timeout
        Passed to :class:`~eqflow.targets.openmm_bridge.OpenMMEnergy`.
    atom_types : {"name", "element"}
        How :attr:`atom_types` is built. "name" (default): one type per atom name as written in the PDB,
        with the digit that enumerates a group dropped, so methyl hydrogens (HB1, HB2, HB3 -> HB) share a
        type and backbone atoms (N, CA, C, O ...) get their own (alanine dipeptide: 10 types, C CA CB CH3
        H HA HB HH3 N O); this is finer than elements, which cannot tell CA from CB, while keeping the permutation
        symmetry of equivalent atoms. "element": one type per element. Types are numbered in sorted
        order of their names (:attr:`atom_type_names`).
    implicit_solvent : bool
        Append :data:`IMPLICIT_SOLVENT_XML` to ``forcefield`` if not already there.

    Attributes
    ----------
    energy : OpenMMEnergy
    system : openmm.System
    topology : mdtraj.Topology
    positions : torch.Tensor ``[n_atoms, 3]`` float64, nm (the PDB geometry, not centred)
    masses : torch.Tensor ``[n_atoms]`` float64, amu
    atom_types : torch.LongTensor ``[n_atoms]``; ``n_atom_types``; ``atom_type_names``
    dihedrals : dict name -> 4-tuple of atom indices (backbone phi/psi of each residue that has them;
        for a single residue named "phi" and "psi", otherwise "phi_<i>", "psi_<i>")
    chiral_centers : list of ``(center, (n, c, cb))`` for residues with CA and CB
    chiral_signs : list of ±1, the handedness of each chiral centre in the PDB geometry
    temperature, kT (kJ/mol)
    """

    def __init__(self, pdb_path: str, forcefield=("amber99sbildn.xml",), temperature: float = 300.0,
                 n_workers: int = 0, platform: str = "Reference", cpu_threads: int | None = 1,
                 atom_types: str = "name", implicit_solvent: bool = False, timeout: float = 300.0):
        import mdtraj
        import openmm.app as app

        pdb_path = os.fspath(pdb_path)
        if not os.path.isfile(pdb_path):
            raise FileNotFoundError(f"PDB file not found: {pdb_path}")
        if isinstance(forcefield, str):
            forcefield = (forcefield,)
        forcefield = tuple(forcefield)
        if implicit_solvent and IMPLICIT_SOLVENT_XML not in forcefield:
            forcefield = forcefield + (IMPLICIT_SOLVENT_XML,)
        if atom_types not in ("name", "element"):
            raise ValueError(f"atom_types must be 'name' or 'element', got {atom_types!r}")

        self.pdb_path = pdb_path
        self.forcefield_files = forcefield
        self.temperature = float(temperature)
        self.kT = kT_kj_per_mol(temperature)

        pdb = _read_pdb(pdb_path)
        ff = _load_forcefield(forcefield)
        try:
            self.system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None,
                                          rigidWater=False, removeCMMotion=False)
        except ValueError as err:
            msg = str(err)
            if "No template found" in msg:
                raise ValueError(_template_error(ff, pdb.topology, forcefield, pdb_path, msg)) from None
            raise ValueError(f"cannot parametrize {pdb_path} with {list(forcefield)}: {msg}") from None

        self.openmm_topology = pdb.topology
        self.topology = mdtraj.Topology.from_openmm(pdb.topology)
        n = self.topology.n_atoms
        import openmm.unit as unit
        self.positions = torch.tensor(
            np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)),
            dtype=torch.float64).reshape(n, 3)
        self.masses = torch.tensor([self.system.getParticleMass(i).value_in_unit(unit.dalton)
                                    for i in range(n)], dtype=torch.float64)

        if atom_types == "name":
            names = _atom_type_names_by_name(pdb_path)
        else:
            names = [a.element.symbol for a in self.topology.atoms]
        self.atom_type_names = sorted(set(names))
        index = {t: i for i, t in enumerate(self.atom_type_names)}
        self.atom_types = torch.tensor([index[t] for t in names], dtype=torch.long)
        self.n_atom_types = len(self.atom_type_names)

        self.dihedrals = self._backbone_dihedrals()
        self.chiral_centers = self._chiral_centers()
        self.chiral_signs = self._chiral_signs()
        self.energy = OpenMMEnergy(self.system, temperature, n_workers=n_workers, platform=platform,
                                   cpu_threads=cpu_threads, timeout=timeout)
        # What a model built from the registry's Energy alone needs (node features, analysis).
        for name in ("topology", "atom_types", "n_atom_types", "atom_type_names", "masses",
                     "dihedrals", "chiral_centers", "chiral_signs", "positions"):
            setattr(self.energy, name, getattr(self, name))

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    def _backbone_dihedrals(self) -> dict[str, tuple[int, int, int, int]]:
        import mdtraj

        traj = mdtraj.Trajectory(self.positions.numpy()[None], self.topology)
        phi_idx, _ = mdtraj.compute_phi(traj)
        psi_idx, _ = mdtraj.compute_psi(traj)
        out = {}
        for name, idx in (("phi", phi_idx), ("psi", psi_idx)):
            if len(idx) == 1:
                out[name] = tuple(int(i) for i in idx[0])
            else:
                for k, row in enumerate(idx):
                    out[f"{name}_{k}"] = tuple(int(i) for i in row)
        return out

    def _chiral_centers(self) -> list[tuple[int, tuple[int, int, int]]]:
        out = []
        for res in self.topology.residues:
            by_name = {a.name: a.index for a in res.atoms}
            if all(k in by_name for k in ("N", "CA", "C", "CB")):
                out.append((by_name["CA"], (by_name["N"], by_name["C"], by_name["CB"])))
        return out

    def _chiral_signs(self) -> list[float]:
        """Handedness (±1, :func:`eqflow.geometry.chirality_sign`) of each chiral centre in this
        system's own PDB geometry: the enantiomer the reference data and the evaluation fold to."""
        from ..geometry import chirality_sign
        signs = []
        for center, neighbors in self.chiral_centers:
            s = float(chirality_sign(self.positions[None], center, neighbors)[0])
            if s == 0:
                raise ValueError(f"chiral centre {center} is planar in {self.pdb_path}")
            signs.append(s)
        return signs

    def close(self) -> None:
        """Stop the energy's worker processes, if any."""
        self.energy.close()

    def __enter__(self) -> "MolecularSystem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MolecularSystem({os.path.basename(self.pdb_path)!r}, n_atoms={self.n_atoms}, "
                f"forcefield={list(self.forcefield_files)}, temperature={self.temperature})")


def alanine_dipeptide(solvent: str = "vacuum", temperature: float = 300.0, **kwargs) -> MolecularSystem:
    """Alanine dipeptide (ACE-ALA-NME, 22 atoms) with amber99sbildn, in vacuum or OBC implicit solvent.

    Parameters
    ----------
    solvent : {"vacuum", "implicit"}
    temperature : float
        K.
    **kwargs
        Passed to :class:`MolecularSystem` (n_workers, platform, cpu_threads, atom_types).
    """
    if solvent not in ("vacuum", "implicit"):
        raise ValueError(f"solvent must be 'vacuum' or 'implicit', got {solvent!r}")
    ff = ("amber99sbildn.xml",) + ((IMPLICIT_SOLVENT_XML,) if solvent == "implicit" else ())
    mol = MolecularSystem(alanine_dipeptide_pdb(), forcefield=ff, temperature=temperature, **kwargs)
    mol.solvent = solvent
    return mol


def pdb_system(pdb: str, forcefield=("amber99sbildn.xml",), temperature: float = 300.0, solvent: str = "vacuum",
               **kwargs) -> MolecularSystem:
    """Any molecule from a PDB file and OpenMM force-field files (the ``pdb`` target of a config).

    Parameters
    ----------
    pdb : path of the PDB file (hydrogens included)
    forcefield : OpenMM force-field file names (a string or a list)
    temperature : K
    solvent : ``"vacuum"`` or ``"implicit"`` (adds :data:`IMPLICIT_SOLVENT_XML`)
    **kwargs : passed to :class:`MolecularSystem` (n_workers, platform, cpu_threads, atom_types, timeout)
    """
    if solvent not in ("vacuum", "implicit"):
        raise ValueError(f"solvent must be 'vacuum' or 'implicit', got {solvent!r}")
    mol = MolecularSystem(pdb, forcefield=forcefield, temperature=temperature,
                          implicit_solvent=solvent == "implicit", **kwargs)
    mol.solvent = solvent
    return mol
