"""Target energies (reduced, ``[batch, n_atoms, dim] -> [batch]``) and the registry of named systems."""
from .energy import Energy
from .double_well import DoubleWell
from .lennard_jones import LennardJones, lj13, lj55
from .tempered import TemperedEnergy, target_temperature
from .regularize import finite_mask, masked_energy, regularize_energy
from .langevin import MALAResult, energy_and_force, mala
from .registry import TARGETS, make_target, register_target
# Molecular targets (OpenMM and mdtraj are imported only when a system is built).
from .openmm_bridge import OpenMMEnergy
from .molecular import MolecularSystem, alanine_dipeptide, alanine_dipeptide_pdb
