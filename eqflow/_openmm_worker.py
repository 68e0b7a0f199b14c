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
# eqflow package). Messages are length-prefixed pickles over stdin/stdout: an 8-byte big-endian
# length, then ``pickle((request_id, kind, payload))``; every reply echoes the request id, so the
# parent can never take a stale reply for a new one. Framing (rather than bare pickle streams) lets
# the parent read with a timeout and tell a truncated message from a complete one.
# A plain subprocess (not multiprocessing) never re-imports the parent's __main__ and exits by
# itself when the parent goes away (EOF on stdin), however the parent ends.

HEADER_BYTES = 8


def encode_frame(obj) -> bytes:
    """``obj`` pickled, behind its 8-byte big-endian length."""
    import pickle

    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def _read_frame_blocking(stream):
    """The next frame from a binary stream, or None at EOF (also at EOF inside a frame)."""
    import pickle

    header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    n = int.from_bytes(header, "big")
    payload = stream.read(n)
    if len(payload) < n:
        return None
    return pickle.loads(payload)


def _serve() -> None:
    import os
    import sys
    import traceback

    # Keep the protocol channel private: anything OpenMM or a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    context = None
    while True:
        try:
            msg = _read_frame_blocking(inp)
        except OSError:
            return
        if msg is None:
            return
        request_id, kind, payload = msg
        try:
            if kind == "init":
                context = _make_context(*payload)
                reply = (request_id, "ok", None)
            elif kind == "eval":
                reply = (request_id, "ok", _evaluate(context, payload))
            elif kind == "quit":
                return
            else:
                reply = (request_id, "error", f"unknown message {kind!r}")
        except Exception:  # reported to the parent, which raises it there
            reply = (request_id, "error", traceback.format_exc())
        out.write(encode_frame(reply))
        out.flush()


if __name__ == "__main__":
    _serve()
