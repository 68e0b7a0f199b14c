"""ODE solver settings: one value type and the one list of solver names (torchdiffeq methods).

Plain Python (no torch import), so the config, the flows and evaluation all take their names from here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["SolverSettings", "FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "SOLVERS"]

FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4")
ADAPTIVE_SOLVERS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
SOLVERS = FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS


@dataclass(frozen=True)
class SolverSettings:
    """How an ODE is solved: a fixed-step method with ``n_steps`` steps, or an adaptive one with
    tolerances ``rtol`` / ``atol``.

    The solver is part of the model (a reverse-KL flow learns to exploit a coarse fixed-step solve),
    so training and evaluation each carry one of these, and evaluation checks itself against
    :meth:`refined`.
    """

    solver: str = "rk4"
    n_steps: int = 20
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.fixed_step and int(self.n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1 for solver {self.solver!r}, got {self.n_steps}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"tolerances must be positive, got rtol={self.rtol}, atol={self.atol}")

    @property
    def fixed_step(self) -> bool:
        return self.solver in FIXED_STEP_SOLVERS

    def refined(self, factor: int = 2) -> "SolverSettings":
        """``factor`` times the steps (fixed step) or tolerances divided by ``factor`` (adaptive)."""
        return replace(self, n_steps=int(self.n_steps) * factor, rtol=self.rtol / factor, atol=self.atol / factor)

    @property
    def label(self) -> str:
        """``rk4-32`` or ``dopri5-1e-05``."""
        return f"{self.solver}-{self.n_steps}" if self.fixed_step else f"{self.solver}-{self.rtol:g}"
