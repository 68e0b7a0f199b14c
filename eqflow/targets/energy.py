"""The energy interface every target implements."""
from __future__ import annotations

import torch

from ..geometry import check_positions

__all__ = ["Energy"]


class Energy(torch.nn.Module):
    """A reduced (dimensionless) potential ``u(x)`` on ``[batch, n_atoms, dim]`` positions.

    Subclasses implement :meth:`_energy`. ``u`` is in units of kT (molecules: ``E / kT``; particle
    systems are already dimensionless). Forces come from autograd unless a subclass supplies them.

    Attributes
    ----------
    n_atoms, dim : int
        Shape of one configuration.
    """

    def __init__(self, n_atoms: int, dim: int):
        super().__init__()
        self.n_atoms = int(n_atoms)
        self.dim = int(dim)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``[batch]`` of positions ``x`` ``[batch, n_atoms, dim]``."""
        check_positions(x, self.n_atoms, self.dim)
        return self._energy(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """``-grad u(x)``, ``[batch, n_atoms, dim]`` (in units of kT per length)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self.energy(x)
            (g,) = torch.autograd.grad(u.sum(), x)
        return -g
