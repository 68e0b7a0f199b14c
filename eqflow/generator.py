"""A trained flow with its target: sample, score, load from a checkpoint."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .builders import build_flow, build_target
from .config import config_from_dict

__all__ = ["Generator", "load_checkpoint", "resolve_eval_divergence", "AUTO_EXACT_CPU_COORDS"]

# eval.divergence "auto": exact off the CPU, and on the CPU up to this many coordinates N·dim. Exact
# costs one backward pass per coordinate: measured per 10,000 points (rk4 8 steps, EGNN hidden 32,
# 3 layers) about 1 minute on an H200 at 22x3 but hours on one CPU core, while LJ13 (39) and DW4
# (8) stay within minutes on one core (docs/results.md).
AUTO_EXACT_CPU_COORDS = 40


def resolve_eval_divergence(mode: str, n_atoms: int, dim: int, device) -> str:
    """``"exact"`` or ``"hutchinson"`` for an evaluation ``mode`` (``"auto"`` decides by device and size)."""
    if mode != "auto":
        return mode
    cpu = torch.device(device).type == "cpu"
    return "exact" if not cpu or n_atoms * dim <= AUTO_EXACT_CPU_COORDS else "hutchinson"


class Generator:
    """Sampler with exact (or Hutchinson) log-densities and the target it was trained for.

    Attributes
    ----------
    flow : the trained flow
    target : its :class:`~eqflow.targets.Energy` (reduced energies)
    config : the :class:`~eqflow.config.Config` it was trained with
    """

    def __init__(self, flow, target, config):
        self.flow, self.target, self.config = flow, target, config
        self.flow.eval()

    @property
    def dtype(self):
        return next(self.flow.parameters()).dtype

    @property
    def device(self):
        return next(self.flow.parameters()).device

    def solver_settings(self, refine: int = 1) -> dict:
        """The evaluation solver: ``eval.solver`` / ``eval.n_steps`` / tolerances, each falling back
        to the training value. ``refine`` multiplies fixed steps and divides tolerances (for checks)."""
        ev, fl = self.config.eval, self.config.flow
        solver, n_steps = ev.solver or fl.solver, ev.n_steps or fl.n_steps
        rtol, atol = ev.rtol or fl.rtol, ev.atol or fl.atol
        return dict(solver=solver, n_steps=n_steps * refine, rtol=rtol / refine, atol=atol / refine)

    def eval_divergence(self, divergence: str | None = None) -> str:
        """The divergence evaluation uses: ``divergence`` or ``eval.divergence``, ``"auto"`` resolved."""
        flow = self.flow
        return resolve_eval_divergence(divergence or self.config.eval.divergence, flow.n_atoms, flow.dim,
                                       self.device)

    @contextlib.contextmanager
    def _solver(self, settings: dict | None):
        # The trained field is a continuous-time object: evaluation may solve it more accurately than
        # training did. Importance weights are only right when (x, log q) come from a converged solve.
        settings = settings or self.solver_settings()
        saved = {k: getattr(self.flow, k) for k in settings}
        for k, v in settings.items():
            setattr(self.flow, k, v)
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(self.flow, k, v)

    @torch.no_grad()
    def sample(self, n: int, batch_size: int | None = None, divergence: str | None = None,
               with_log_prob: bool = True, progress: bool = False, solver: dict | None = None):
        """Draw ``n`` samples on the flow's device: ``(x [n, N, dim], log_q [n])`` (``log_q`` None if
        not requested).

        Batches of ``batch_size`` (default ``eval.batch_size``) keep memory flat; no autograd graph is
        kept. ``divergence`` defaults to the config's evaluation divergence (:meth:`eval_divergence`),
        ``solver`` (a dict like
        :meth:`solver_settings`) to the evaluation solver.
        """
        batch_size = batch_size or self.config.eval.batch_size
        divergence = self.eval_divergence(divergence)
        xs, lqs = [], []
        from tqdm.auto import tqdm
        with self._solver(solver):
            for start in tqdm(range(0, n, batch_size), disable=not progress, desc="sample"):
                x, lq = self.flow.sample(min(batch_size, n - start), with_log_prob=with_log_prob,
                                         divergence=divergence)
                xs.append(x)
                lqs.append(lq)
        x = torch.cat(xs)
        return x, (torch.cat(lqs) if with_log_prob else None)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, batch_size: int | None = None, divergence: str | None = None,
                 solver: dict | None = None):
        """``log q(x)`` ``[n]`` for CoM-free ``x`` ``[n, N, dim]``, in batches, no graph kept; on the
        device of ``x`` (solved on the flow's device)."""
        batch_size = batch_size or self.config.eval.batch_size
        divergence = self.eval_divergence(divergence)
        xd = x.to(device=self.device, dtype=self.dtype)
        with self._solver(solver):
            lq = torch.cat([self.flow.log_prob(xd[i:i + batch_size], divergence=divergence)
                            for i in range(0, x.shape[0], batch_size)])
        return lq.to(x.device)


def load_checkpoint(path, target=None) -> Generator:
    """Rebuild the flow and target of a training run from ``checkpoint.pt`` (or its run folder).

    Parameters
    ----------
    path : checkpoint file or run folder
    target : reuse an already built target (for example an OpenMM energy with workers)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "eqflow-checkpoint-1":
        raise ValueError(f"{path} is not an eqflow checkpoint")
    cfg = config_from_dict(state["config"])
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        target = target if target is not None else build_target(cfg)
        flow = build_flow(cfg, target)
    finally:
        torch.set_default_dtype(old)
    flow.load_state_dict(state["model"])
    return Generator(flow, target, cfg)
