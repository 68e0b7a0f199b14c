"""Reference sampling for molecules: OpenMM Langevin MD with optional temperature replica exchange.

Replica exchange (parallel tempering) here is a short own implementation: K Contexts in one process,
one per temperature of a geometric ladder; every ``exchange_interval`` steps neighbouring pairs
(alternately the even and the odd pairs) swap configurations with the Metropolis probability
``min(1, exp[(beta_i - beta_j) (E_i - E_j)])``, velocities rescaled by ``sqrt(T_new / T_old)``. Only the
lowest temperature is saved. The run checkpoints every replica's positions and velocities and the
frames so far to one ``.npz`` written atomically, and resumes from it.

Output: an mdtraj HDF5 trajectory (coordinates in nm, potential energy in kJ/mol, time in ps) plus a
sidecar ``<stem>.npz`` (float64 positions, reduced energies ``u = E / kT``, energies in kJ/mol, time)
and ``<stem>.json`` (metadata: force field, solvent, temperatures, time step, frames, acceptance).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data_io import atomic_savez, atomic_write, atomic_write_text, sidecar_paths
from .openmm_bridge import kT_kj_per_mol

__all__ = ["REMDConfig", "temperature_ladder", "run_replica_exchange", "write_trajectory",
           "sidecar_paths"]


def temperature_ladder(t_min: float, t_max: float, n: int) -> np.ndarray:
    """Geometric ladder ``[n]`` from ``t_min`` to ``t_max`` (equal acceptance for constant heat capacity)."""
    if n < 1:
        raise ValueError(f"need at least one replica, got {n}")
    if n == 1:
        return np.array([float(t_min)])
    if t_max <= t_min:
        raise ValueError(f"t_max ({t_max}) must exceed t_min ({t_min}) with several replicas")
    return t_min * (t_max / t_min) ** (np.arange(n) / (n - 1))


@dataclass
class REMDConfig:
    """Settings of :func:`run_replica_exchange` (all times in steps; see ``timestep_fs``).

    ``n_steps`` production steps per replica after ``equilibration_steps``; a frame of the lowest
    temperature every ``save_interval`` steps; an exchange attempt every ``exchange_interval`` steps
    (both intervals must be multiples of it); a checkpoint every ``checkpoint_interval`` steps.
    """

    temperatures: list = field(default_factory=lambda: [300.0])
    n_steps: int = 10_000
    equilibration_steps: int = 0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    save_interval: int = 1000
    exchange_interval: int = 500
    checkpoint_interval: int = 100_000
    platform: str = "Reference"
    seed: int = 0
    minimize: bool = True

    def validate(self) -> None:
        t = list(self.temperatures)
        if not t or any(b <= a for a, b in zip(t, t[1:])):
            raise ValueError(f"temperatures must be increasing, got {t}")
        for name in ("save_interval", "checkpoint_interval", "n_steps", "equilibration_steps"):
            v = getattr(self, name)
            if v % self.exchange_interval:
                raise ValueError(f"{name} ({v}) must be a multiple of exchange_interval "
                                 f"({self.exchange_interval})")


def write_trajectory(path: str, positions: np.ndarray, topology, energies_kj=None, time_ps=None) -> None:
    """Write ``positions`` ``[n, N, 3]`` nm with an mdtraj topology; format from the extension.

    ``.h5`` uses mdtraj's HDF5 format (needs PyTables) and also stores potential energies (kJ/mol);
    anything else goes through ``mdtraj.Trajectory.save`` (PDB, DCD, XTC ...).
    """
    import mdtraj

    positions = np.asarray(positions, dtype=np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".h5"):
        try:
            from mdtraj.formats import HDF5TrajectoryFile
            import tables  # noqa: F401  (mdtraj needs it for HDF5; say so plainly)
        except ImportError as err:
            raise ImportError("writing .h5 trajectories needs PyTables: pip install tables "
                              "(or choose a .dcd/.pdb output)") from err
        def write(tmp):
            with HDF5TrajectoryFile(tmp, "w", force_overwrite=True) as f:
                f.topology = topology
                kw = {}
                if energies_kj is not None:
                    kw["potentialEnergy"] = np.asarray(energies_kj, dtype=np.float32)
                f.write(coordinates=positions,
                        time=None if time_ps is None else np.asarray(time_ps, dtype=np.float32), **kw)

        atomic_write(path, write, suffix=".tmp.h5")
    else:
        traj = mdtraj.Trajectory(positions, topology,
                                 time=None if time_ps is None else np.asarray(time_ps))
        traj.save(path, force_overwrite=True)


def _positions(state):
    import openmm.unit as unit
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)


def _velocities(state):
    import openmm.unit as unit
    return np.asarray(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
                      dtype=np.float64)


def run_replica_exchange(system, topology, positions, output: str, config: REMDConfig,
                         checkpoint: str | None = None, resume: bool = False,
                         metadata: dict | None = None, progress: bool = True,
                         stop_after_cycles: int | None = None) -> dict | None:
    """Run Langevin MD (with replica exchange when ``len(config.temperatures) > 1``).

    Parameters
    ----------
    system : openmm.System
        Simulated as given (build it without constraints for exact unconstrained reference data).
    topology : mdtraj.Topology
    positions : array ``[N, 3]`` nm
        Start of every replica.
    output : str
        Trajectory of the lowest temperature (``.h5`` recommended); sidecars beside it.
    config : REMDConfig
    checkpoint : str, optional
        Checkpoint file (default ``<output stem>.ckpt.npz``).
    resume : bool
        Continue from ``checkpoint`` if it exists (the config must match the one it was written with).
    metadata : dict, optional
        Extra keys for the JSON sidecar (force field, solvent, ...).
    stop_after_cycles : int, optional
        Run at most this many exchange cycles in this call, then checkpoint and return None without
        writing the output (a planned interruption: continue with ``resume=True``).

    Returns
    -------
    dict : the metadata written to the JSON sidecar (None after a planned interruption).
    """
    import openmm
    import openmm.unit as unit
    from tqdm.auto import tqdm

    config.validate()
    temps = np.asarray(config.temperatures, dtype=np.float64)
    k = len(temps)
    beta = 1.0 / np.array([kT_kj_per_mol(t) for t in temps])
    n_atoms = system.getNumParticles()
    if checkpoint is None:
        checkpoint = os.path.splitext(output)[0] + ".ckpt.npz"
    ex = config.exchange_interval
    total_cycles = (config.equilibration_steps + config.n_steps) // ex
    equil_cycles = config.equilibration_steps // ex
    save_every = config.save_interval // ex
    ckpt_every = max(1, config.checkpoint_interval // ex)
    config_json = json.dumps(asdict(config), sort_keys=True)

    platform = openmm.Platform.getPlatformByName(config.platform)
    props = {"Threads": "1"} if config.platform == "CPU" else {}
    contexts, integrators = [], []
    for i, t in enumerate(temps):
        integ = openmm.LangevinMiddleIntegrator(t * unit.kelvin, config.friction_per_ps / unit.picosecond,
                                                config.timestep_fs * unit.femtosecond)
        integ.setRandomNumberSeed(int(1 + config.seed * 1009 + i))
        integrators.append(integ)
        contexts.append(openmm.Context(system, integ, platform, props))

    rng = np.random.default_rng(config.seed)
    cycle = 0
    frames, energies, times = [], [], []
    n_attempt = np.zeros(max(k - 1, 0), dtype=np.int64)
    n_accept = np.zeros(max(k - 1, 0), dtype=np.int64)
    resumed = False
    if resume and os.path.exists(checkpoint):
        ck = np.load(checkpoint, allow_pickle=False)
        if str(ck["config_json"]) != config_json:
            raise ValueError(f"checkpoint {checkpoint} was written with another configuration:\n"
                             f"{ck['config_json']}\nvs\n{config_json}")
        cycle = int(ck["cycle"])
        for i, c in enumerate(contexts):
            c.setPositions(ck["positions"][i])
            c.setVelocities(ck["velocities"][i])
            # New noise after a resume (the Langevin RNG state is not in the checkpoint).
            integrators[i].setRandomNumberSeed(int(1 + config.seed * 1009 + i + 7919 * (cycle + 1)))
        frames = list(ck["frames"])
        energies = list(ck["energies"])
        times = list(ck["times"])
        n_attempt, n_accept = ck["n_attempt"].copy(), ck["n_accept"].copy()
        rng.bit_generator.state = json.loads(str(ck["rng_state"]))
        resumed = True
    else:
        x0 = np.asarray(positions, dtype=np.float64).reshape(n_atoms, 3)
        for i, c in enumerate(contexts):
            c.setPositions(x0)
            if config.minimize:
                openmm.LocalEnergyMinimizer.minimize(c, 1.0, 1000)
            c.setVelocitiesToTemperature(temps[i] * unit.kelvin, int(1 + config.seed * 1009 + i))

    def save_checkpoint():
        states = [c.getState(getPositions=True, getVelocities=True) for c in contexts]
        atomic_savez(
            checkpoint, cycle=np.int64(cycle), config_json=np.array(config_json),
            positions=np.stack([_positions(s) for s in states]),
            velocities=np.stack([_velocities(s) for s in states]),
            frames=np.asarray(frames, dtype=np.float64).reshape(-1, n_atoms, 3),
            energies=np.asarray(energies, dtype=np.float64), times=np.asarray(times, dtype=np.float64),
            n_attempt=n_attempt, n_accept=n_accept,
            rng_state=np.array(json.dumps(rng.bit_generator.state)))

    t0 = time.time()
    bar = tqdm(total=total_cycles, initial=cycle, disable=not progress, unit="cycle",
               desc=f"MD {k} replica(s), {ex} steps/cycle")
    cycles_this_call = 0
    while cycle < total_cycles:
        if stop_after_cycles is not None and cycles_this_call >= stop_after_cycles:
            bar.close()
            save_checkpoint()
            return None
        cycles_this_call += 1
        for integ in integrators:
            integ.step(ex)
        cycle += 1
        if k > 1:
            states = [c.getState(getEnergy=True, getPositions=True, getVelocities=True) for c in contexts]
            e = np.array([s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) for s in states])
            pos = [_positions(s) for s in states]
            vel = [_velocities(s) for s in states]
            swapped = False
            for i in range(cycle % 2, k - 1, 2):
                j = i + 1
                n_attempt[i] += 1
                log_acc = (beta[i] - beta[j]) * (e[i] - e[j])
                if log_acc >= 0 or rng.random() < np.exp(log_acc):
                    n_accept[i] += 1
                    pos[i], pos[j] = pos[j], pos[i]
                    vel[i], vel[j] = vel[j] * np.sqrt(temps[i] / temps[j]), vel[i] * np.sqrt(temps[j] / temps[i])
                    e[i], e[j] = e[j], e[i]
                    swapped = True
            if swapped:
                for i, c in enumerate(contexts):
                    c.setPositions(pos[i])
                    c.setVelocities(vel[i])
            e0, x0 = e[0], pos[0]
        else:
            s = contexts[0].getState(getEnergy=True, getPositions=True)
            e0, x0 = s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), _positions(s)
        if cycle > equil_cycles and (cycle - equil_cycles) % save_every == 0:
            frames.append(x0)
            energies.append(e0)
            times.append((cycle - equil_cycles) * ex * config.timestep_fs * 1e-3)
        if cycle % ckpt_every == 0:
            save_checkpoint()
        if k > 1 and cycle % 20 == 0:
            acc = n_accept / np.maximum(n_attempt, 1)
            bar.set_postfix(frames=len(frames), acc=" ".join(f"{a:.2f}" for a in acc))
        bar.update(1)
    bar.close()
    save_checkpoint()

    frames_arr = np.asarray(frames, dtype=np.float64).reshape(-1, n_atoms, 3)
    e_kj = np.asarray(energies, dtype=np.float64)
    times_arr = np.asarray(times, dtype=np.float64)
    kt0 = kT_kj_per_mol(temps[0])
    write_trajectory(output, frames_arr, topology, energies_kj=e_kj, time_ps=times_arr)
    npz_path, json_path = sidecar_paths(output)
    meta = dict(metadata or {})
    meta.update(
        trajectory=os.path.basename(output), temperature=float(temps[0]),
        temperatures=[float(t) for t in temps], kT_kj_per_mol=kt0, units=dict(
            positions="nm", energies="reduced u = E/kT at the lowest temperature",
            energies_kj="kJ/mol", time="ps"),
        n_frames=int(len(frames_arr)), timestep_fs=config.timestep_fs,
        friction_per_ps=config.friction_per_ps, save_interval_steps=config.save_interval,
        exchange_interval_steps=config.exchange_interval, production_steps=config.n_steps,
        equilibration_steps=config.equilibration_steps, platform=config.platform, seed=config.seed,
        exchange_attempts=n_attempt.tolist(), exchange_accepted=n_accept.tolist(),
        exchange_acceptance=(n_accept / np.maximum(n_attempt, 1)).tolist(), resumed=resumed,
        wall_seconds_last_session=time.time() - t0,
    )
    atomic_savez(npz_path, positions=frames_arr, energies=e_kj / kt0, energies_kj=e_kj, time_ps=times_arr,
                  meta_json=np.array(json.dumps(meta)))
    atomic_write_text(json_path, json.dumps(meta, indent=2) + "\n")
    return meta
