"""ODE right-hand side of a continuous flow, augmented with the divergence."""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .divergence import exact_divergence, hutchinson_divergence

__all__ = ["AugmentedDynamics", "DIVERGENCES", "CPU_EXACT_ROWS"]

DIVERGENCES = ("exact", "hutchinson")

# Exact divergence on CPU evaluates the field and its N·dim backward passes on blocks of this many
# rows: the dense edge tensors [rows, N, N, H] of a block stay in cache across the passes. At 22x3
# (EGNN hidden 32, 3 layers, one core) blocks of 32-64 rows were 1.6-1.8x faster than 256 at once.
CPU_EXACT_ROWS = 32


class AugmentedDynamics(torch.nn.Module):
    """``d/dt (x, Δ) = (v(t, x, h), div v)`` on flattened states ``([B, N·dim], [B])``.

    With ``transport_cost=True`` the state carries a third part ``[B, 2]`` that integrates the
    kinetic energy ``|v|²`` and the squared Frobenius norm of the field's Jacobian ``‖∂v/∂x‖²_F``
    (exact, or its Hutchinson estimate ``|εᵀ ∂v/∂x|²`` from the same vector-Jacobian product as the
    divergence): the regularizers of Finlay et al. (2020), which keep trajectories straight and smooth
    so that a few fixed solver steps stay accurate and training cannot exploit discretization error.

    The solver boundary is the only place positions are flat. One instance per solve binds the
    node features ``h``, the divergence mode (``None`` to skip it) and, for Hutchinson, the
    ``noise``, which so stays fixed across all solver stages, checkpoint recomputations and the
    adjoint pass. ``exact_method`` and ``exact_chunk_size`` choose how the exact divergence batches
    its vector-Jacobian products (see :func:`~eqflow.flows.divergence.exact_divergence`). When autograd is off (evaluation) no graph outlives one evaluation: the
    divergence's graph is built locally and dropped, so memory does not grow with the number of steps.
    """

    def __init__(self, field: torch.nn.Module, n_atoms: int, dim: int, h: torch.Tensor | None = None,
                 divergence: str | None = "exact", noise: torch.Tensor | None = None,
                 checkpoint: bool = False, transport_cost: bool = False, exact_method: str = "auto",
                 exact_chunk_size: int | None = None, exact_row_chunk: int | str | None = "auto"):
        super().__init__()
        if divergence not in DIVERGENCES + (None,):
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES} or None")
        if divergence == "hutchinson" and noise is None:
            raise ValueError("Hutchinson divergence needs its noise tensor")
        if transport_cost and divergence is None:
            raise ValueError("transport_cost needs a divergence mode (its Jacobian term shares that pass)")
        self.field = field
        self.n_atoms, self.dim = n_atoms, dim
        self.h, self.divergence, self.noise, self.checkpoint = h, divergence, noise, checkpoint
        self.transport_cost = transport_cost
        self.exact_method, self.exact_chunk_size = exact_method, exact_chunk_size
        self.exact_row_chunk = exact_row_chunk
        self.nfe = 0

    def forward(self, t: torch.Tensor, state):
        xf = state[0]
        b = xf.shape[0]
        x = xf.view(b, self.n_atoms, self.dim)
        tb = t.to(xf.dtype).expand(b)
        self.nfe += 1
        if self.divergence is None:
            v = self.field(tb, x, self.h)
            return v.flatten(1), torch.zeros_like(state[1])
        keep_graph = torch.is_grad_enabled()
        if keep_graph and self.checkpoint:
            # Only x and t are stored; the field's graph is rebuilt during the backward pass, so
            # training memory is that of one evaluation, whatever the number of steps.
            v, div, jac = checkpoint(self._evaluate, tb, x, True, use_reentrant=False)
        else:
            v, div, jac = self._evaluate(tb, x, keep_graph)
        if self.transport_cost:
            return v.flatten(1), div, torch.stack([v.pow(2).flatten(1).sum(-1), jac], dim=-1)
        return v.flatten(1), div

    def _evaluate(self, t: torch.Tensor, x: torch.Tensor, keep_graph: bool):
        with torch.enable_grad():
            # Without a graph to keep (evaluation, or the forward pass of the adjoint method) x is cut
            # loose: its requires_grad flag may be set while grad mode was off, linking it to nothing.
            if not keep_graph or not x.requires_grad:
                x = x.detach().requires_grad_(True)
            rows = self._row_chunk(x)
            if rows is None or x.shape[0] <= rows:
                v, div, jac = self._evaluate_rows(t, x, self.h, keep_graph)
            else:
                h = self.h
                parts = [self._evaluate_rows(t[i:i + rows], x[i:i + rows], None if h is None else h[i:i + rows],
                                             keep_graph) for i in range(0, x.shape[0], rows)]
                v, div = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                jac = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
        if not keep_graph:
            v, div = v.detach(), div.detach()
            jac = None if jac is None else jac.detach()
        return v, div, jac

    def _analytic(self) -> bool:
        """The field gives its exact divergence itself (e.g. :class:`~eqflow.nn.PairwiseField`)."""
        return (self.divergence == "exact" and not self.transport_cost
                and bool(getattr(self.field, "analytic_divergence", False)))

    def _row_chunk(self, x: torch.Tensor) -> int | None:
        if self._analytic():
            return None  # no per-coordinate passes to keep in cache
        if self.exact_row_chunk != "auto":
            return self.exact_row_chunk
        return CPU_EXACT_ROWS if self.divergence == "exact" and x.device.type == "cpu" else None

    def _evaluate_rows(self, t, x, h, keep_graph: bool):
        if self._analytic():
            v, div = self.field.velocity_and_divergence(t, x, h, create_graph=keep_graph)
            return v, div, None
        v = self.field(t, x, h)
        if self.divergence == "exact":
            out = exact_divergence(v, x, create_graph=keep_graph, frobenius=self.transport_cost,
                                   method=self.exact_method, chunk_size=self.exact_chunk_size)
        else:
            out = hutchinson_divergence(v, x, self.noise, create_graph=keep_graph,
                                        frobenius=self.transport_cost)
        div, jac = out if self.transport_cost else (out, None)
        return v, div, jac
