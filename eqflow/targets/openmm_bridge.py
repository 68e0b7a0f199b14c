"""A torch autograd bridge to OpenMM: reduced energies and their exact gradients from any System.

``OpenMMEnergy(system, temperature)`` evaluates ``u(x) = E(x) / kT`` for positions ``[batch, n_atoms, 3]``
in nm. The backward pass uses OpenMM's own forces (``grad u = -F / kT``), never finite differences.
Positions are handed to OpenMM in float64; results come back in the input's dtype and device.

Evaluation runs either in this process (``n_workers=0``, one Context built on first use) or in a pool of
worker processes (``n_workers > 0``), each with its own Context built from the System's XML. Workers
are fresh interpreters running ``eqflow/_openmm_worker.py`` (like multiprocessing's "spawn" but
without re-importing the caller's ``__main__``, so no ``if __name__ == "__main__"`` guard is needed
and no fork of a process running OpenMM/torch threads happens). They talk pickled numpy over pipes,
are stopped by :meth:`OpenMMEnergy.close`, by leaving a ``with`` block or by an ``atexit`` hook, and
exit by themselves on EOF when the parent dies in any way, so they are never orphaned.

Configurations OpenMM cannot evaluate (non-finite input, overlapping atoms, OpenMM exceptions) get
energy ``+inf`` and zero force, and are counted in :attr:`OpenMMEnergy.n_nonfinite`.
"""
from __future__ import annotations

import atexit
import os
import pickle
import select
import subprocess
import sys
import time
import weakref

import numpy as np
import torch
from torch.autograd.function import once_differentiable

# The OpenMM side (Context building, evaluation, pool workers) lives in a torch-free module so that
# spawned workers start quickly instead of importing torch.
from .. import _openmm_worker
from .._openmm_worker import _evaluate, _make_context
from ..errors import WorkerError
from .energy import Energy

__all__ = ["OpenMMEnergy", "kT_kj_per_mol", "BOLTZMANN_KJ_PER_MOL_K"]

BOLTZMANN_KJ_PER_MOL_K = 0.0083144626


def kT_kj_per_mol(temperature: float) -> float:
    """``k_B T`` in kJ/mol for a temperature in K."""
    return BOLTZMANN_KJ_PER_MOL_K * float(temperature)


_WORKER_FILE = os.path.abspath(_openmm_worker.__file__)


class _Worker:
    """One evaluation subprocess with its own Context, spoken to in framed, numbered messages.

    Every read and write has a deadline: a worker that hangs or is stopped (SIGSTOP) makes the
    exchange fail with :class:`WorkerError` naming its pid instead of blocking the parent forever.
    """

    def __init__(self, system_xml: str, platform: str, cpu_threads: int | None):
        env = dict(os.environ)
        # One thread per worker for predictable throughput (also for OpenMM's CPU platform default).
        env.setdefault("OPENMM_CPU_THREADS", "1")
        # Load the worker module by file path, not as eqflow._openmm_worker: importing the eqflow
        # package would pull in torch and the models, many seconds per worker for nothing.
        boot = ("import importlib.util as u; s = u.spec_from_file_location('_eqflow_openmm_worker', "
                f"{_WORKER_FILE!r}); m = u.module_from_spec(s); s.loader.exec_module(m); m._serve()")
        # Unbuffered pipes: select() on the file descriptors then tells the whole truth.
        self.proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, bufsize=0)
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self.init_msg = (system_xml, platform, cpu_threads)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _fail(self, what: str) -> "WorkerError":
        return WorkerError(f"OpenMM worker pid {self.pid} {what}")

    def send(self, request_id: int, kind: str, payload, timeout: float) -> None:
        data = memoryview(_openmm_worker.encode_frame((request_id, kind, payload)))
        deadline = time.monotonic() + timeout
        while data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self._in], [], left)[1]:
                raise self._fail(f"did not take a request within {timeout:g} s (hung or stopped)")
            try:
                n = os.write(self._in, data)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise self._fail(f"is gone (exit code {self.proc.poll()}); see its stderr above") from None
            data = data[n:]

    def _read_exact(self, n: int, deadline: float, timeout: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise self._fail(f"did not reply within {timeout:g} s (hung or stopped)")
            chunk = os.read(self._out, n - got)
            if not chunk:
                raise self._fail(f"died (exit code {self.proc.poll()}); see its stderr above")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def receive(self, request_id: int, timeout: float):
        deadline = time.monotonic() + timeout
        n = int.from_bytes(self._read_exact(_openmm_worker.HEADER_BYTES, deadline, timeout), "big")
        reply_id, status, value = pickle.loads(self._read_exact(n, deadline, timeout))
        if reply_id != request_id:
            raise self._fail(f"answered request {reply_id} when {request_id} was expected")
        if status != "ok":
            raise self._fail(f"failed:\n{value}")
        return value

    def stop(self, timeout: float = 2.0, kill: bool = False) -> None:
        if kill:
            self.proc.kill()  # also ends a stopped (SIGSTOP) process
        try:
            self.proc.stdin.close()  # EOF: the worker returns from its loop
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _shutdown_pool(pool, kill: bool = False) -> None:
    for w in pool:
        try:
            w.stop(kill=kill)
        except Exception:  # pragma: no cover - interpreter teardown
            pass


# --------------------------------------------------------------------------------------------------
# torch side

class _OpenMMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bridge: "OpenMMEnergy") -> torch.Tensor:
        pos = x.detach().to("cpu", torch.float64).numpy()
        e, f = bridge._compute(pos)
        kt = bridge.kT
        u = torch.from_numpy(e / kt).to(device=x.device, dtype=x.dtype)
        grad = torch.from_numpy(-f / kt).to(device=x.device, dtype=x.dtype)
        ctx.save_for_backward(grad)
        return u

    @staticmethod
    @once_differentiable  # OpenMM gives no Hessian: a double backward raises instead of returning 0
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_out[:, None, None] * grad, None


class OpenMMEnergy(Energy):
    """Reduced energy ``u = E / kT`` of an OpenMM System, differentiable through OpenMM's forces.

    Parameters
    ----------
    system : openmm.System
        Copied (as XML) at construction; later changes to it are not seen.
    temperature : float
        In K; ``kT = 0.0083144626 kJ/mol/K * temperature``.
    n_workers : int
        0 evaluates in this process; ``k > 0`` starts ``k`` worker processes on first use and splits
        each batch into ``k`` chunks.
    platform : {"CPU", "Reference"}
        "Reference" (default) is double precision throughout and, for a molecule of a few dozen
        atoms, as fast as "CPU" (scripts/bench_energy.py); "CPU" (mixed precision) pays off for
        larger systems.
    cpu_threads : int or None
        Threads per Context on the CPU platform (default 1: predictable when several run at once).
        None leaves OpenMM's default.
    timeout : float
        Seconds a worker may take to accept a request or to answer it (also to start). A worker
        past it is killed and the call raises :class:`~eqflow.errors.WorkerError` naming its pid.

    Attributes
    ----------
    n_nonfinite : int
        Configurations so far that got ``+inf`` (non-finite input, overlapping atoms, OpenMM errors).
    n_evaluations : int
        Configurations evaluated so far.

    Notes
    -----
    Input ``[batch, n_atoms, 3]`` in nm, any float dtype and device; output ``[batch]`` in that dtype.
    Use as a context manager (``with OpenMMEnergy(...) as e:``) or call :meth:`close` to stop workers;
    an ``atexit`` hook stops any left running.

    Every exchange with the pool is all or nothing: any failure (a worker that died, hung, answered
    out of turn or raised, a broken pipe, an interrupt such as Ctrl-C in the middle of a batch)
    kills the whole pool and raises; the next call starts a fresh pool. A call therefore returns the
    energies of its own configurations or raises, never another call's results.
    """

    def __init__(self, system, temperature: float, n_workers: int = 0, platform: str = "Reference",
                 cpu_threads: int | None = 1, timeout: float = 300.0):
        import openmm

        if platform not in ("CPU", "Reference"):
            raise ValueError(f"platform must be 'CPU' or 'Reference', got {platform!r}")
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive (seconds), got {timeout}")
        super().__init__(system.getNumParticles(), 3)
        self.system_xml = openmm.XmlSerializer.serialize(system)
        self.temperature = float(temperature)
        self.kT = kT_kj_per_mol(temperature)
        self.n_workers = int(n_workers)
        self.platform = platform
        self.cpu_threads = cpu_threads
        self.timeout = float(timeout)
        self._next_request = 0
        self.n_nonfinite = 0
        self.n_evaluations = 0
        self._context = None
        self._terms = None  # (force class names, Context with one group per class): energy_terms
        self._pool = None
        self._finalizer = None

    # -- state that cannot be pickled (Context, pool) is rebuilt lazily after unpickling/deepcopy
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_context"] = None
        state["_terms"] = None
        state["_pool"] = None
        state["_finalizer"] = None
        return state

    def _request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    def _ensure_pool(self):
        if self._pool is None:
            pool = []
            try:
                pool.extend(_Worker(self.system_xml, self.platform, self.cpu_threads)
                            for _ in range(self.n_workers))
                rid = self._request_id()
                for w in pool:  # started together, waited on together
                    w.send(rid, "init", w.init_msg, self.timeout)
                for w in pool:
                    w.receive(rid, self.timeout)
            except BaseException:
                _shutdown_pool(pool, kill=True)
                raise
            self._pool = pool
            # weakref.finalize runs at close(), at garbage collection and at interpreter exit.
            self._finalizer = weakref.finalize(self, _shutdown_pool, pool)
            _LIVE.add(self)
        return self._pool

    def _pool_compute(self, pos: np.ndarray):
        """One all-or-nothing exchange with the pool: every worker's reply to this request, or raise."""
        try:
            pool = self._ensure_pool()
            chunks = [c for c in np.array_split(pos, min(self.n_workers, pos.shape[0])) if len(c)]
            rid = self._request_id()
            for w, c in zip(pool, chunks):
                w.send(rid, "eval", np.ascontiguousarray(c), self.timeout)
            return [w.receive(rid, self.timeout) for w in pool[:len(chunks)]]
        except BaseException as exc:
            # Whatever went wrong (including KeyboardInterrupt between a request and its reply), the
            # pipes may hold half a message or a reply nobody will read: no worker is trusted again.
            self.close(kill=True)
            if isinstance(exc, WorkerError) or not isinstance(exc, Exception):
                raise  # KeyboardInterrupt / SystemExit stay what they are
            raise WorkerError(f"OpenMM worker pool failed ({type(exc).__name__}: {exc}); the pool was "
                              "closed and the next call starts a fresh one") from exc

    def _compute(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float64 ``[B, N, 3]`` nm -> energies ``[B]`` kJ/mol, forces ``[B, N, 3]`` kJ/mol/nm."""
        b = pos.shape[0]
        if b == 0:
            return np.zeros(0), np.zeros_like(pos)
        if self.n_workers == 0:
            if self._context is None:
                self._context = _make_context(self.system_xml, self.platform, self.cpu_threads)
            e, f, bad = _evaluate(self._context, pos)
        else:
            results = self._pool_compute(pos)
            e = np.concatenate([r[0] for r in results])
            f = np.concatenate([r[1] for r in results])
            bad = sum(r[2] for r in results)
        self.n_nonfinite += int(bad)
        self.n_evaluations += b
        return e, f

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"positions must be a float tensor, got {x.dtype}")
        return _OpenMMFunction.apply(x, self)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced energy ``[B]`` and force ``-grad u`` ``[B, N, 3]`` in one OpenMM call, no autograd."""
        self.energy(x.detach()[:0])  # shape check only (cheap, empty batch)
        pos = x.detach().to("cpu", torch.float64).numpy()
        e, f = self._compute(pos)
        u = torch.from_numpy(e / self.kT).to(device=x.device, dtype=x.dtype)
        return u, torch.from_numpy(f / self.kT).to(device=x.device, dtype=x.dtype)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """``-grad u(x)`` ``[B, N, 3]`` straight from OpenMM (kT/nm)."""
        return self.energy_and_force(x)[1]

    def energy_terms(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Reduced energy of each kind of force, ``{force class name: [B] float64}`` (kT).

        Which term is wrong says what a model has not learned yet (bonds, angles, overlapping atoms
        in ``NonbondedForce``...); the terms add up to :meth:`energy`. Evaluated in this process on
        its own Context, one force group per force class (the System given at construction is not
        touched); OpenMM allows 32 groups. Rows OpenMM cannot evaluate are ``+inf`` in every term.
        No autograd: diagnostics only.
        """
        import openmm
        import openmm.unit as unit

        self.energy(x.detach()[:0])  # shape check only
        if self._terms is None:
            system = openmm.XmlSerializer.deserialize(self.system_xml)
            names = sorted({f.__class__.__name__ for f in system.getForces()})
            if len(names) > 32:
                raise ValueError(f"energy_terms needs at most 32 kinds of force, the system has {len(names)}")
            for f in system.getForces():
                f.setForceGroup(names.index(f.__class__.__name__))
            self._terms = (names, _make_context(openmm.XmlSerializer.serialize(system), self.platform,
                                                self.cpu_threads))
        names, context = self._terms
        pos = x.detach().to("cpu", torch.float64).numpy()
        out = {name: np.full(pos.shape[0], np.inf) for name in names}
        for i, xi in enumerate(pos):
            if not np.isfinite(xi).all():
                continue
            try:
                context.setPositions(xi)
                values = [context.getState(getEnergy=True, groups={g}).getPotentialEnergy()
                          .value_in_unit(unit.kilojoule_per_mole) for g in range(len(names))]
            except (openmm.OpenMMException, ValueError, OverflowError):
                continue
            for name, v in zip(names, values):
                out[name][i] = v / self.kT if np.isfinite(v) else np.inf
        return out

    def close(self, kill: bool = False) -> None:
        """Stop the worker processes (if any; ``kill`` without waiting for them) and drop the Context.
        Safe to call twice."""
        if self._finalizer is not None:
            if kill:
                self._finalizer.detach()
                _shutdown_pool(self._pool or [], kill=True)
            else:
                self._finalizer()  # runs _shutdown_pool once
            self._finalizer = None
        self._pool = None
        self._context = None
        self._terms = None

    def __enter__(self) -> "OpenMMEnergy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extra_repr(self) -> str:
        return (f"n_atoms={self.n_atoms}, temperature={self.temperature}, platform={self.platform!r}, "
                f"n_workers={self.n_workers}")


# weakref.finalize already runs at exit; this explicit hook closes every live bridge first, in
# this module's own terms, so an interpreter exit never waits on a worker.
_LIVE: "weakref.WeakSet[OpenMMEnergy]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:  # pragma: no cover - exercised in a subprocess test
    for bridge in list(_LIVE):
        bridge.close()
