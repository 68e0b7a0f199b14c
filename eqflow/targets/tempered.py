"""A target at another temperature: ``u_T(x) = u(x) · T_target / T``, with a count of evaluations.

Reduced energies scale with ``1/T`` (DESIGN.md, "Temperature"): the target's own reduced energy
``u = E / (k_B·T_target)`` becomes ``E / (k_B·T) = u · T_target / T`` at ``T``. For particle systems
the target temperature is 1 (reduced units). Annealing moves :attr:`TemperedEnergy.temperature`
down a ladder; the wrapped target itself is never changed.
"""
from __future__ import annotations

import torch

from .energy import Energy

__all__ = ["TemperedEnergy", "target_temperature"]


def target_temperature(target) -> float:
    """The temperature a target's reduced energies refer to: ``target.temperature`` (molecules, K),
    else ``target.tau`` (DW4, reduced units), else 1.0 (particle systems in reduced units)."""
    return float(getattr(target, "temperature", getattr(target, "tau", 1.0)))


class TemperedEnergy(Energy):
    """``target`` at :attr:`temperature` (default: the target's own).

    Parameters
    ----------
    target : an :class:`Energy` whose reduced energies refer to ``t_target``
    t_target : the target's temperature (default :func:`target_temperature`)

    Attributes
    ----------
    temperature : float, settable; energies are ``u · t_target / temperature``
    n_evaluated : configurations scored so far (each call adds its batch size)
    """

    def __init__(self, target: Energy, t_target: float | None = None):
        super().__init__(target.n_atoms, target.dim)
        # Not a submodule: the wrapper adds no state of its own to the target's (OpenMM pools etc.).
        object.__setattr__(self, "target", target)
        self.t_target = float(target_temperature(target) if t_target is None else t_target)
        if self.t_target <= 0:
            raise ValueError(f"the target temperature must be positive, got {self.t_target}")
        self.temperature = self.t_target
        self.n_evaluated = 0

    @property
    def factor(self) -> float:
        """``T_target / T``: multiplies the target's reduced energies."""
        return self.t_target / self.temperature

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        self.n_evaluated += int(x.shape[0])
        u = self.target.energy(x)
        return u if self.temperature == self.t_target else u * self.factor

    def extra_repr(self) -> str:
        return f"target={type(self.target).__name__}, t_target={self.t_target}, temperature={self.temperature}"
