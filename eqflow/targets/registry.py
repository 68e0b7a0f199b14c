"""Targets by name: ``make_target("lj13")``.

``TARGETS`` maps a name to a factory ``(**kwargs) -> Energy``. Other modules extend it by plain
assignment, e.g. the molecular systems::

    from eqflow.targets.registry import TARGETS
    TARGETS["ala2_vacuum"] = lambda **kw: ...
"""
from __future__ import annotations

from typing import Callable, Dict

from .double_well import DoubleWell
from .energy import Energy
from .lennard_jones import lj13, lj55

__all__ = ["TARGETS", "make_target", "register_target"]

TARGETS: Dict[str, Callable[..., Energy]] = {
    "dw4": DoubleWell,
    "lj13": lj13,
    "lj55": lj55,
}
# Hook: molecular systems ("ala2_vacuum", "ala2_implicit", PDB-based) register here from their own
# module, so this file never imports OpenMM.


def register_target(name: str, factory: Callable[..., Energy], overwrite: bool = False) -> None:
    """Add ``factory`` under ``name`` (lower-case); refuses to replace an entry unless ``overwrite``."""
    key = name.lower()
    if key in TARGETS and not overwrite and TARGETS[key] is not factory:
        raise ValueError(f"target {key!r} is already registered")
    TARGETS[key] = factory


def make_target(name: str, **kwargs) -> Energy:
    """Build the target called ``name`` (case-insensitive), passing ``kwargs`` to its factory.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    key = str(name).lower()
    if key not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}")
    return TARGETS[key](**kwargs)




# Molecular systems (eqflow.targets.molecular). The factories return the OpenMMEnergy, which carries
# topology, atom_types, n_atom_types, dihedrals and chiral_centers; OpenMM is imported only on use.
def _alanine_dipeptide_energy(solvent: str) -> Callable[..., Energy]:
    def factory(**kwargs) -> Energy:
        from .molecular import alanine_dipeptide
        return alanine_dipeptide(solvent, **kwargs).energy
    factory.__name__ = f"ala2_{solvent}"
    return factory


register_target("ala2_vacuum", _alanine_dipeptide_energy("vacuum"))
register_target("ala2_implicit", _alanine_dipeptide_energy("implicit"))


def _pdb_energy(pdb: str, **kwargs) -> Energy:
    """``target: {name: pdb, kwargs: {pdb: path, forcefield: [...], temperature: 300, solvent: implicit}}``."""
    from .molecular import pdb_system
    return pdb_system(pdb, **kwargs).energy


register_target("pdb", _pdb_energy)
