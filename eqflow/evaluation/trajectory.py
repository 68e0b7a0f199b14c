"""MD trajectories in and samples out: reference data from MD files, export for VMD/PyMOL.

MD output of :mod:`eqflow.targets.md` is a trajectory (``.h5`` mdtraj HDF5, or ``.dcd``) with a sidecar
``<stem>.npz`` (float64 positions, reduced energies) and ``<stem>.json`` (metadata).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..geometry import remove_mean

__all__ = ["load_md_reference", "export_samples"]


def _sidecars(path: str) -> tuple[str, str]:
    stem, _ = os.path.splitext(path)
    return stem + ".npz", stem + ".json"


def load_md_reference(path, stride: int = 1, topology=None, energy=None):
    """Load MD reference samples as :class:`eqflow.distributions.reference.ReferenceData`.

    Parameters
    ----------
    path : str
        ``.h5`` (mdtraj HDF5) or ``.dcd`` trajectory written by ``scripts/simulate_md.py``.
    stride : int
        Keep every ``stride``-th frame.
    topology : mdtraj.Topology or str, optional
        Needed for ``.dcd`` when the JSON sidecar names no PDB.
    energy : Energy, optional
        Recomputes reduced energies when no sidecar ``.npz`` stores them.

    Returns
    -------
    ReferenceData
        ``positions`` ``[n, N, 3]`` float64 nm with the (unweighted) centre removed, ``energies`` ``[n]``
        reduced (E / kT at the trajectory's temperature), ``meta`` from the JSON sidecar plus ``source``.
    """
    import mdtraj

    from ..distributions.reference import ReferenceData

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"MD trajectory not found: {path}")
    npz_path, json_path = _sidecars(path)
    meta = {}
    if os.path.exists(json_path):
        with open(json_path) as fh:
            meta = json.load(fh)
    positions = energies = None
    if os.path.exists(npz_path):
        with np.load(npz_path, allow_pickle=False) as d:
            positions, energies = d["positions"], d["energies"]
    if positions is None:
        if path.endswith(".h5"):
            traj = mdtraj.load(path)
        else:
            if topology is None:
                topology = meta.get("pdb")
            if topology is None:
                raise ValueError(f"{path}: a .dcd needs a topology (pass topology=...)")
            traj = mdtraj.load(path, top=topology)
        positions = traj.xyz.astype(np.float64)
    positions = positions[::stride]
    x = remove_mean(torch.from_numpy(np.ascontiguousarray(positions)))
    if energies is not None:
        u = torch.from_numpy(np.ascontiguousarray(energies[::stride]))
    elif energy is not None:
        with torch.no_grad():
            u = energy.energy(x).to(torch.float64)
    else:
        raise ValueError(f"{path}: no reduced energies stored (sidecar {npz_path} missing); "
                         "pass energy=... to compute them")
    meta = dict(meta, source=path, stride=stride)
    return ReferenceData(x, u, meta)


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
