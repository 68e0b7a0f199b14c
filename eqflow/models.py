"""The model protocol: what training, evaluation and comparison accept.

Any ``torch.nn.Module`` with

- ``sample(n) -> (x [n, N, dim], log_q [n])``: reparameterized samples (gradients flow from ``x``
  and ``log_q`` to the parameters) and their log-density,
- ``log_prob(x [n, N, dim]) -> [n]``: the log-density with respect to the Lebesgue measure on the
  centre-of-mass-free subspace V (DESIGN.md), the same measure for every model,
- ``reflection_symmetric``: True when ``q(x) = q(-x)`` (eqflow's E(3) flows, which sample both
  enantiomers of a chiral molecule); False for a model that makes one enantiomer (the IC baseline),

can be trained by :class:`~eqflow.training.Trainer` (reverse KL, maximum likelihood) and judged by
:func:`~eqflow.evaluation.evaluate_model`. eqflow's continuous flows also accept solver settings and
a divergence choice; evaluation uses them when a model has them (:func:`is_ode_model`).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["DensityModel", "is_ode_model", "check_model"]


@runtime_checkable
class DensityModel(Protocol):
    reflection_symmetric: bool

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


def is_ode_model(model) -> bool:
    """True for eqflow's continuous flows (solver settings and divergence choices apply)."""
    from .flows import ContinuousFlow
    return isinstance(model, ContinuousFlow)


def check_model(model) -> None:
    """A TypeError naming what is missing when ``model`` does not follow the protocol."""
    missing = [a for a in ("sample", "log_prob") if not callable(getattr(model, a, None))]
    if not hasattr(model, "reflection_symmetric"):
        missing.append("reflection_symmetric")
    if missing:
        raise TypeError(f"{type(model).__name__} is not a density model: it lacks {', '.join(missing)} "
                        "(see eqflow.models)")
