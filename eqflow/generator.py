"""A trained flow with its target: sample, score, load from a checkpoint."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .builders import build_model, build_target
from .checkpoint import read_checkpoint
from .config import config_from_dict, eval_solver
from .models import check_model, is_ode_model
from .solvers import SolverSettings
from .errors import CheckpointError

__all__ = ["Generator", "load_checkpoint", "resolve_eval_divergence", "AUTO_EXACT_CPU_COORDS"]

# eval.divergence "auto": exact off the CPU, and on the CPU up to this many coordinates N·dim. Exact
# costs one backward pass per coordinate: measured per 10,000 points (rk4 8 steps, EGNN hidden 32,
# 3 layers) about 1 minute on an H200 at 22x3 but hours on one CPU core, while LJ13 (39) and DW4
# (8) stay within minutes on one core (docs/results.md).
AUTO_EXACT_CPU_COORDS = 40


def resolve_eval_divergence(mode: str, n_atoms: int, dim: int, device, field=None) -> str:
    """``"exact"`` or ``"hutchinson"`` for an evaluation ``mode`` (``"auto"`` decides by device and
    size; always exact for a ``field`` that gives its exact divergence in closed form)."""
    if mode != "auto":
        return mode
    if getattr(field, "analytic_divergence", False):
        return "exact"  # as cheap as one more field evaluation
    cpu = torch.device(device).type == "cpu"
    return "exact" if not cpu or n_atoms * dim <= AUTO_EXACT_CPU_COORDS else "hutchinson"


class Generator:
    """A model with its target: samples with log-densities in batches, no autograd graph kept.

    Works for any model of the protocol (:mod:`eqflow.models`). For eqflow's continuous flows the
    evaluation solver and divergence apply: importance weights are only right when ``(x, log q)``
    come from a converged solve.

    Parameters
    ----------
    model : the trained model
    target : its :class:`~eqflow.targets.Energy` (reduced energies)
    config : the :class:`~eqflow.config.Config` it was trained with, or None for a hand-built model
    solver : evaluation :class:`~eqflow.solvers.SolverSettings` (default: ``eval_solver(config)``, or
        the model's own settings)
    divergence : evaluation divergence of ODE models (default ``config.eval.divergence`` or "exact";
        ``"auto"`` is resolved per call by :meth:`eval_divergence`)
    batch_size : samples per batch (default ``config.eval.batch_size`` or 1000)

    Attributes
    ----------
    model (also ``flow``), target, config, solver, divergence, batch_size, reflection_symmetric
    """

    def __init__(self, model, target, config=None, solver: SolverSettings | None = None,
                 divergence: str | None = None, batch_size: int | None = None):
        check_model(model)
        self.model, self.target, self.config = model, target, config
        self.ode = is_ode_model(model)
        if solver is None and self.ode:
            solver = eval_solver(config) if config is not None else model.solver_settings
        self.solver = solver if self.ode else None
        self.divergence = divergence or (config.eval.divergence if config is not None else "exact")
        self.batch_size = int(batch_size or (config.eval.batch_size if config is not None else 1000))
        self.model.eval()

    @property
    def flow(self):
        return self.model

    @property
    def reflection_symmetric(self) -> bool:
        return bool(getattr(self.model, "reflection_symmetric", False))

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def device(self):
        return next(self.model.parameters()).device

    def solver_settings(self, refine: int = 1) -> SolverSettings | None:
        """The evaluation solver (``refine`` times the steps, tolerances divided by it); None for
        models without an ODE."""
        return None if self.solver is None else self.solver.refined(refine) if refine != 1 else self.solver

    def eval_divergence(self, divergence: str | None = None) -> str:
        """The divergence evaluation uses: ``divergence`` or the generator's, ``"auto"`` resolved
        (:func:`resolve_eval_divergence`)."""
        mode = divergence or self.divergence
        if not self.ode:
            return mode
        return resolve_eval_divergence(mode, self.model.n_atoms, self.model.dim, self.device,
                                       getattr(self.model, "field", None))

    def _sample_batch(self, n: int, with_log_prob: bool, divergence: str):
        if self.ode:
            return self.model.sample(n, with_log_prob=with_log_prob, divergence=divergence)
        x, log_q = self.model.sample(n)
        return x, (log_q if with_log_prob else None)

    @torch.no_grad()
    def sample(self, n: int, batch_size: int | None = None, divergence: str | None = None,
               with_log_prob: bool = True, progress: bool = False, solver: SolverSettings | None = None):
        """Draw ``n`` samples on the model's device: ``(x [n, N, dim], log_q [n])`` (``log_q`` None if
        not requested). ``divergence`` and ``solver`` default to the evaluation settings."""
        from tqdm.auto import tqdm
        batch_size = batch_size or self.batch_size
        divergence = self.eval_divergence(divergence)
        xs, lqs = [], []
        with self._using(solver):
            for start in tqdm(range(0, n, batch_size), disable=not progress, desc="sample"):
                x, lq = self._sample_batch(min(batch_size, n - start), with_log_prob, divergence)
                xs.append(x)
                lqs.append(lq)
        if not xs:  # n == 0: the model's own empty tensors
            return self._sample_batch(0, with_log_prob, divergence)
        x = torch.cat(xs)
        return x, (torch.cat(lqs) if with_log_prob else None)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, batch_size: int | None = None, divergence: str | None = None,
                 solver: SolverSettings | None = None):
        """``log q(x)`` ``[n]`` for CoM-free ``x`` ``[n, N, dim]``, in batches, no graph kept; on the
        device of ``x`` (computed on the model's device)."""
        batch_size = batch_size or self.batch_size
        divergence = self.eval_divergence(divergence)
        xd = x.to(device=self.device, dtype=self.dtype)
        kw = dict(divergence=divergence) if self.ode else {}
        with self._using(solver):
            lq = torch.cat([self.model.log_prob(xd[i:i + batch_size], **kw)
                            for i in range(0, x.shape[0], batch_size)] or [xd.new_zeros(0)])
        return lq.to(x.device)

    def _using(self, solver: SolverSettings | None):
        return self.model.using_solver(solver or self.solver) if self.ode else contextlib.nullcontext()


def load_checkpoint(path, target=None) -> Generator:
    """Rebuild the flow and target of a config-driven training run from ``checkpoint.pt`` (or its
    run folder, or a ``pretrained/`` model folder).

    The file is verified (CRC) and loaded with torch's safe unpickler: a damaged checkpoint, or one
    carrying objects that could run code, raises :class:`~eqflow.errors.CheckpointError` (one line).
    A model trained by hand (not from a config) is reloaded by rebuilding it and calling
    :func:`~eqflow.training.load_model_weights`.

    Parameters
    ----------
    path : checkpoint file or folder holding ``checkpoint.pt``
    target : reuse an already built target (for example an OpenMM energy with workers)
    """
    from .training.trainer import check_checkpoint_format

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = read_checkpoint(path)
    check_checkpoint_format(state, path)
    config = state.get("metadata", {}).get("config")
    if config is None:
        raise CheckpointError(f"{path} holds a hand-built model (no config): rebuild the model and use "
                              "eqflow.training.load_model_weights(model, path)")
    cfg = config_from_dict(config)
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        target = target if target is not None else build_target(cfg)
        flow = build_model(cfg, target)
    finally:
        torch.set_default_dtype(old)
    flow.load_state_dict(state["model"])
    return Generator(flow, target, cfg)
