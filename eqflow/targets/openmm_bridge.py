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
import subprocess
import sys
import weakref

import numpy as np
import torch
from torch.autograd.function import once_differentiable

# The OpenMM side (Context building, evaluation, pool workers) lives in a torch-free module so that
# spawned workers start quickly instead of importing torch.
from .. import _openmm_worker
from .._openmm_worker import _evaluate, _make_context
from .energy import Energy

__all__ = ["OpenMMEnergy", "kT_kj_per_mol", "BOLTZMANN_KJ_PER_MOL_K"]

BOLTZMANN_KJ_PER_MOL_K = 0.0083144626


def kT_kj_per_mol(temperature: float) -> float:
    """``k_B T`` in kJ/mol for a temperature in K."""
    return BOLTZMANN_KJ_PER_MOL_K * float(temperature)


_WORKER_FILE = os.path.abspath(_openmm_worker.__file__)


class _Worker:
    """One evaluation subprocess with its own Context."""

    def __init__(self, system_xml: str, platform: str, cpu_threads: int | None):
        env = dict(os.environ)
        # One thread per worker for predictable throughput (also for OpenMM's CPU platform default).
        env.setdefault("OPENMM_CPU_THREADS", "1")
        # Load the worker module by file path, not as eqflow._openmm_worker: importing the eqflow
        # package would pull in torch and the models, many seconds per worker for nothing.
        boot = ("import importlib.util as u; s = u.spec_from_file_location('_eqflow_openmm_worker', "
                f"{_WORKER_FILE!r}); m = u.module_from_spec(s); s.loader.exec_module(m); m._serve()")
        self.proc = subprocess.Popen([sys.executable, "-c", boot],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.send(("init", system_xml, platform, cpu_threads))

    def send(self, msg) -> None:
        pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def receive(self):
        try:
            status, value = pickle.load(self.proc.stdout)
        except EOFError:
            raise RuntimeError(f"OpenMM worker (pid {self.proc.pid}) died, exit code "
                               f"{self.proc.poll()}; see its stderr above") from None
        if status != "ok":
            raise RuntimeError(f"OpenMM worker (pid {self.proc.pid}) failed:\n{value}")
        return value

    def stop(self, timeout: float = 2.0) -> None:
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


def _shutdown_pool(pool) -> None:
    for w in pool:
        try:
            w.stop()
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
    """

    def __init__(self, system, temperature: float, n_workers: int = 0, platform: str = "Reference",
                 cpu_threads: int | None = 1):
        import openmm

        if platform not in ("CPU", "Reference"):
            raise ValueError(f"platform must be 'CPU' or 'Reference', got {platform!r}")
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        super().__init__(system.getNumParticles(), 3)
        self.system_xml = openmm.XmlSerializer.serialize(system)
        self.temperature = float(temperature)
        self.kT = kT_kj_per_mol(temperature)
        self.n_workers = int(n_workers)
        self.platform = platform
        self.cpu_threads = cpu_threads
        self.n_nonfinite = 0
        self.n_evaluations = 0
        self._context = None
        self._pool = None
        self._finalizer = None

    # -- state that cannot be pickled (Context, pool) is rebuilt lazily after unpickling/deepcopy
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_context"] = None
        state["_pool"] = None
        state["_finalizer"] = None
        return state

    def _ensure_pool(self):
        if self._pool is None:
            pool = [_Worker(self.system_xml, self.platform, self.cpu_threads)
                    for _ in range(self.n_workers)]
            try:
                for w in pool:  # started together, waited on together
                    w.receive()
            except Exception:
                _shutdown_pool(pool)
                raise
            self._pool = pool
            # weakref.finalize runs at close(), at garbage collection and at interpreter exit.
            self._finalizer = weakref.finalize(self, _shutdown_pool, pool)
            _LIVE.add(self)
        return self._pool

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
            pool = self._ensure_pool()
            chunks = [c for c in np.array_split(pos, min(self.n_workers, b)) if len(c)]
            for w, c in zip(pool, chunks):
                w.send(("eval", np.ascontiguousarray(c)))
            results, errors = [], []
            for w in pool[:len(chunks)]:  # drain every reply so the pipes stay in step
                try:
                    results.append(w.receive())
                except RuntimeError as err:
                    errors.append(err)
            if errors:
                self.close()  # a broken pool is rebuilt on the next call
                raise errors[0]
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

    def close(self) -> None:
        """Stop the worker processes (if any) and drop the Context. Safe to call twice."""
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown_pool once
            self._finalizer = None
        self._pool = None
        self._context = None

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
