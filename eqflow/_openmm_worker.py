"""OpenMM evaluation for :mod:`eqflow.targets.openmm_bridge`, free of torch.

Plain numpy in and out, so the same code serves the in-process Context and the spawned pool
workers; a worker imports only this module, numpy and OpenMM, and starts quickly.
"""
from __future__ import annotations

import numpy as np


def _make_context(system_xml: str, platform: str, cpu_threads: int | None):
    import openmm

    system = openmm.XmlSerializer.deserialize(system_xml)
    # The integrator is never stepped; a Context just needs one.
    integrator = openmm.VerletIntegrator(0.001)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {}
    if platform == "CPU" and cpu_threads is not None:
        props["Threads"] = str(int(cpu_threads))
    return openmm.Context(system, integrator, plat, props)


def _evaluate(context, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Energies ``[B]`` (kJ/mol) and forces ``[B, N, 3]`` (kJ/mol/nm) in float64.

    Rows OpenMM cannot evaluate get ``+inf`` and zero force; the third value counts them.
    """
    import openmm
    import openmm.unit as unit

    b, n, _ = pos.shape
    energies = np.full(b, np.inf)
    forces = np.zeros((b, n, 3))
    n_bad = 0
    for i in range(b):
        xi = pos[i]
        if not np.isfinite(xi).all():
            n_bad += 1
            continue
        try:
            context.setPositions(xi)
            state = context.getState(getEnergy=True, getForces=True)
            e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        except (openmm.OpenMMException, ValueError, OverflowError):
            # e.g. "Particle coordinate is NaN" from overlapping atoms: an unevaluable point, not a bug.
            n_bad += 1
            continue
        f = np.asarray(f, dtype=np.float64)
        if not (np.isfinite(e) and np.isfinite(f).all()):
            n_bad += 1
            continue
        energies[i] = e
        forces[i] = f
    return energies, forces, n_bad


# --------------------------------------------------------------------------------------------------
# Worker process protocol: this file run by OpenMMEnergy (loaded by path, without importing the
# eqflow package), pickled messages over stdin/stdout.
# A plain subprocess (not multiprocessing) never re-imports the parent's __main__ and exits by
# itself when the parent goes away (EOF on stdin), however the parent ends.

def _serve() -> None:
    import os
    import pickle
    import sys
    import traceback

    # Keep the protocol channel private: anything OpenMM or a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    context = None
    while True:
        try:
            msg = pickle.load(inp)
        except (EOFError, OSError):
            return
        try:
            if msg[0] == "init":
                context = _make_context(*msg[1:])
                reply = ("ok", None)
            elif msg[0] == "eval":
                reply = ("ok", _evaluate(context, msg[1]))
            elif msg[0] == "quit":
                return
            else:
                reply = ("error", f"unknown message {msg[0]!r}")
        except Exception:  # reported to the parent, which raises it there
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    _serve()
