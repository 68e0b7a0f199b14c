"""Reference samples: storage format, loading (npz and MD trajectories), train/test split, particle cache.

A reference set is CoM-free positions ``[n, N, dim]`` with their reduced energies ``[n]`` and a
metadata dict (system, temperature, units, sampler, ...). On disk it is a ``.npz`` with arrays
``positions`` and ``energies`` and the metadata as a JSON string under ``meta``. Molecular MD
references are a trajectory (``.h5``, ``.dcd``) with sidecars (:func:`eqflow.data_io.sidecar_paths`)
written by :mod:`eqflow.targets.md`; :func:`load_md_reference` reads them. This module is the one
home of reference data: other modules import from it, never the other way round.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..data_io import atomic_write, sidecar_paths
from ..geometry import remove_mean

__all__ = [
    "ReferenceData",
    "save_reference",
    "load_reference",
    "load_md_reference",
    "split_reference",
    "ensure_particle_reference",
    "reference_path",
    "REFERENCE_VERSION",
]


@dataclass
class ReferenceData:
    """Reference samples of a target.

    Attributes
    ----------
    positions : ``[n, N, dim]`` CoM-free positions (float64 for particle systems).
    energies : ``[n]`` reduced energies (kT).
    meta : provenance (system, temperature or tau, n_atoms, dim, units, sampler, ...).
    """

    positions: torch.Tensor
    energies: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.positions.dim() != 3:
            raise ValueError(f"positions must be [n, N, dim], got {tuple(self.positions.shape)}")
        if self.energies.shape != self.positions.shape[:1]:
            raise ValueError(f"energies {tuple(self.energies.shape)} do not match positions "
                             f"{tuple(self.positions.shape)}")

    def __len__(self) -> int:
        return self.positions.shape[0]

    def subset(self, idx) -> "ReferenceData":
        """Rows ``idx`` (index tensor/array/slice) as a new ``ReferenceData`` sharing ``meta``."""
        return ReferenceData(self.positions[idx], self.energies[idx], dict(self.meta))


def _to_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def save_reference(path, positions, energies, meta: dict | None = None) -> Path:
    """Write a reference ``.npz`` atomically (temp file in the same folder, then ``os.replace``).

    Parameters
    ----------
    path : destination; parent folders are created.
    positions : ``[n, N, dim]`` tensor or array (the CoM is removed before saving).
    energies : ``[n]`` reduced energies.
    meta : JSON-serializable metadata.

    Returns
    -------
    The path written. A crash mid-write leaves any previous file intact and no partial file under
    ``path``.
    """
    path = Path(path)
    pos = _to_numpy(positions)
    ene = _to_numpy(energies)
    if pos.ndim != 3 or ene.shape != pos.shape[:1]:
        raise ValueError(f"need positions [n, N, dim] and energies [n], got {pos.shape} and {ene.shape}")
    pos = pos - pos.mean(axis=1, keepdims=True)
    meta_json = json.dumps(meta or {}, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: np.savez(tmp, positions=pos, energies=ene, meta=np.array(meta_json)),
                 suffix=".tmp.npz")
    return path


def load_reference(path, **kwargs) -> ReferenceData:
    """Load a reference set.

    Parameters
    ----------
    path : ``.npz`` written by :func:`save_reference`, or ``.h5`` / ``.dcd`` MD output (delegated to
        :func:`load_md_reference` with ``**kwargs``).

    Raises
    ------
    FileNotFoundError
        Naming the path, if it does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference file not found: {path} (particle systems: generate it "
                                "with scripts/make_reference.py or ensure_particle_reference)")
    if path.suffix.lower() in (".h5", ".dcd"):
        return load_md_reference(path, **kwargs)
    with np.load(path, allow_pickle=False) as data:
        positions = torch.from_numpy(data["positions"].copy())
        energies = torch.from_numpy(data["energies"].copy())
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    return ReferenceData(positions, energies, meta)


def load_md_reference(path, stride: int = 1, topology=None, energy=None):
    """Load MD reference samples as :class:`ReferenceData`.

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

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"MD trajectory not found: {path}")
    npz_path, json_path = sidecar_paths(path)
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


def split_reference(ref: ReferenceData, fraction: float = 0.8, seed: int = 0
                    ) -> tuple[ReferenceData, ReferenceData]:
    """Random split into ``(train, test)`` with ``round(fraction * n)`` training rows.

    MCMC output is ordered by time, so rows are shuffled first (seeded) to keep the halves
    statistically alike.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = len(ref)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    k = int(round(fraction * n))
    return ref.subset(perm[:k]), ref.subset(perm[k:])


#: Version of each particle system's reference setup; cached files of an older version are
#: regenerated. DW4 2: burn-in 20,000 steps instead of 2,000 (the modes had not equilibrated; see
#: eqflow.targets.mcmc.PARTICLE_MCMC_SETTINGS) and the two-start equilibration check.
REFERENCE_VERSION = {"dw4": 2}


def reference_path(name: str, cache_dir="data_cache", seed: int = 0) -> Path:
    """Cache location of a particle reference: ``<cache_dir>/<name>_mcmc_seed<seed>.npz``."""
    return Path(cache_dir) / f"{name.lower()}_mcmc_seed{seed}.npz"


def ensure_particle_reference(name: str, cache_dir="data_cache", n_samples: int | None = None,
                              seed: int = 0, chains: int | None = None, progress: bool = True,
                              path=None, burn_in: int | None = None) -> Path:
    """Return the cached MCMC reference for ``"dw4"``, ``"lj13"`` or ``"lj55"``, generating it if needed.

    A cached file is reused when it holds at least ``n_samples`` samples (any size if ``n_samples``
    is None) and was made by the current sampler settings of its system (``REFERENCE_VERSION``: a
    DW4 file from before the longer burn-in of 2026-12 is stale); otherwise it is regenerated with
    :func:`eqflow.targets.mcmc.sample_particle_system`.

    Parameters
    ----------
    name : particle system.
    cache_dir : folder of the cache (relative paths are relative to the working directory).
    n_samples, chains : sampler size (defaults: ``PARTICLE_MCMC_SETTINGS``).
    seed : sampler seed; part of the file name.
    path : explicit file name instead of the cache location.
    burn_in : sampler burn-in steps (default: ``PARTICLE_MCMC_SETTINGS``; tests use short ones).

    Returns
    -------
    Path of the ``.npz`` file.
    """
    from ..targets.mcmc import sample_particle_system

    path = Path(path) if path is not None else reference_path(name, cache_dir, seed)
    version = REFERENCE_VERSION.get(name.lower(), 1)
    if path.exists():
        cached = load_reference(path)
        meta = cached.meta
        big_enough = n_samples is None or len(cached) >= n_samples
        if big_enough and int(meta.get("version", 1)) >= version:
            return path
        if big_enough:
            warnings.warn(f"{path}: made by an older, under-equilibrated sampler setup (reference version "
                          f"{meta.get('version', 1)} < {version}); regenerating it", stacklevel=2)
    overrides = {} if burn_in is None else {"burn_in": int(burn_in)}
    res, target, cfg = sample_particle_system(name, n_samples=n_samples, chains=chains, seed=seed,
                                              progress=progress, **overrides)
    meta = {
        "system": name.lower(),
        "tau": getattr(target, "tau", 1.0),
        "temperature": getattr(target, "tau", 1.0),
        "n_atoms": target.n_atoms,
        "dim": target.dim,
        "units": "dimensionless (reduced energy, tau = 1)",
        "target": repr(target),
        "sampler": "random-walk Metropolis, all-coordinate Gaussian moves projected to CoM-free subspace",
        "acceptance": res.acceptance,
        "step_size": res.step_size,
        "chains": cfg["chains"],
        "steps": cfg["n_steps"],
        "burn_in": cfg["burn_in"],
        "thin": cfg["thin"],
        "n_samples": int(res.energies.shape[0]),
        "seed": seed,
        "mean_energy_by_start": cfg.get("mean_energy_by_start"),
        "version": version,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generator": "eqflow.distributions.reference.ensure_particle_reference",
    }
    return save_reference(path, remove_mean(res.samples), res.energies, meta)
