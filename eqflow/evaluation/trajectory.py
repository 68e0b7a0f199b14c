"""Samples out for viewers (VMD, PyMOL).

:func:`load_md_reference` lives with the other reference loaders in
:mod:`eqflow.distributions.reference` and is re-exported here for existing callers.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..distributions.reference import load_md_reference

__all__ = ["load_md_reference", "export_samples"]


def export_samples(x, topology, path: str) -> list[str]:
    """Write configurations for viewers (VMD, PyMOL): format from ``path``'s extension.

    Parameters
    ----------
    x : tensor or array ``[B, N, 3]`` in nm
    topology : mdtraj.Topology (e.g. ``MolecularSystem.topology``)
    path : ``.pdb`` (multi-model), ``.dcd``, ``.xtc``, ``.h5`` ...

    Returns
    -------
    list of files written; binary trajectories (dcd, xtc, trr) get a one-frame
    ``<stem>_topology.pdb`` beside them to load them with.
    """
    import mdtraj

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (topology.n_atoms, 3):
        raise ValueError(f"x must be [B, {topology.n_atoms}, 3], got {x.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    traj = mdtraj.Trajectory(x, topology)
    traj.save(path, force_overwrite=True)
    written = [path]
    if os.path.splitext(path)[1].lower() in (".dcd", ".xtc", ".trr"):
        top_path = os.path.splitext(path)[0] + "_topology.pdb"
        traj[0].save_pdb(top_path, force_overwrite=True)
        written.append(top_path)
    return written
