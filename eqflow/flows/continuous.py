"""Continuous normalizing flow on the CoM-free subspace, solved with torchdiffeq."""
from __future__ import annotations

import contextlib

import torch
from torchdiffeq import odeint, odeint_adjoint

from ..distributions import com_free_gaussian_log_prob
from ..geometry import assert_com_free, check_positions
from ..solvers import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SolverSettings
from .divergence import EXACT_METHODS, NOISE_TYPES, sample_noise
from .dynamics import DIVERGENCES, AugmentedDynamics

__all__ = ["ContinuousFlow", "FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "check_sample_count"]



def check_sample_count(n) -> int:
    """``n`` as an int, or a ValueError naming it when it is not a non-negative integer."""
    if isinstance(n, bool) or not isinstance(n, int) and not (torch.is_tensor(n) and n.dim() == 0):
        raise ValueError(f"number of samples must be a non-negative integer, got {n!r}")
    if int(n) < 0:
        raise ValueError(f"number of samples must be >= 0, got {int(n)}")
    return int(n)


class ContinuousFlow(torch.nn.Module):
    """Flow ``x = φ_1(z)``, ``dx/dt = v(t, x, h)``, from a CoM-free base at ``t=0`` to data at ``t=1``.

    ``log q(x) = log p(z) - ∫_0^1 div v(t, x_t) dt``.

    Parameters
    ----------
    field : equivariant vector field ``v(t [B], x [B, N, dim], h [B, N, F]) -> [B, N, dim]``
    base : :class:`~eqflow.distributions.CoMFreeGaussian` or :class:`~eqflow.distributions.HarmonicBase`
        (``MixtureFlow`` takes a mixture)
    node_features : ``[N, F]`` invariant per-atom features passed to the field (atom types), or None
    divergence : ``"exact"`` (``N·dim`` backward passes) or ``"hutchinson"`` (one, unbiased)
    noise : Hutchinson noise, ``"rademacher"`` or ``"gaussian"``; drawn once per solve
    solver : fixed step ``euler | midpoint | rk4`` or adaptive ``dopri5 | bosh3 | adaptive_heun | dopri8``
    n_steps : number of steps of a fixed-step solver
    rtol, atol : tolerances of adaptive solvers
    adjoint : backpropagate with the adjoint method (memory independent of the number of steps)
    checkpoint : recompute each field evaluation in the backward pass instead of storing its graph:
        exact gradients with the memory of one evaluation (about 1.3x the compute)
    exact_method : how the exact divergence runs its ``N·dim`` vector-Jacobian products: ``"loop"``,
        ``"batched"`` (``exact_chunk_size`` at a time) or ``"auto"`` (batched off the CPU)
    exact_chunk_size : basis vectors per batched backward pass (None: from a memory budget)
    exact_row_chunk : exact divergence evaluates the field on blocks of this many rows (``"auto"``:
        32 on CPU, where the blocks stay in cache, the whole batch elsewhere; None: the whole batch)
    """

    # An E(3)-equivariant field and an invariant base give q(x) = q(-x): both enantiomers of a chiral
    # molecule (evaluation folds them and adds log 2; DESIGN.md "Chirality"). Model protocol flag.
    reflection_symmetric = True

    def __init__(self, field: torch.nn.Module, base: torch.nn.Module, node_features: torch.Tensor | None = None,
                 divergence: str = "hutchinson", noise: str = "rademacher", solver: str = "rk4",
                 n_steps: int = 20, rtol: float = 1e-5, atol: float = 1e-5, adjoint: bool = False,
                 checkpoint: bool = False, exact_method: str = "auto", exact_chunk_size: int | None = None,
                 exact_row_chunk: int | str | None = "auto"):
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        if noise not in NOISE_TYPES:
            raise ValueError(f"unknown Hutchinson noise {noise!r}; choose one of {NOISE_TYPES}")
        if solver not in FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of "
                             f"{FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS}")
        if solver in FIXED_STEP_SOLVERS and n_steps < 1:
            raise ValueError(f"n_steps must be >= 1 for solver {solver!r}, got {n_steps}")
        if exact_method not in EXACT_METHODS:
            raise ValueError(f"unknown exact-divergence method {exact_method!r}; choose one of {EXACT_METHODS}")
        if checkpoint and adjoint:
            raise ValueError("choose one of checkpoint=True and adjoint=True")
        self.base = base
        self.n_atoms, self.dim = base.n_atoms, base.dim
        self.field = field
        self.nfe = 0  # field evaluations of the last solve (forward pass only)
        if node_features is not None:
            node_features = torch.as_tensor(node_features, dtype=torch.get_default_dtype())
            if node_features.shape[0] != self.n_atoms or node_features.dim() != 2:
                raise ValueError(f"node_features must have shape [n_atoms={self.n_atoms}, F], "
                                 f"got {tuple(node_features.shape)}")
        self.register_buffer("node_features", node_features)
        self.divergence, self.noise, self.solver, self.n_steps = divergence, noise, solver, int(n_steps)
        self.rtol, self.atol, self.adjoint, self.checkpoint = rtol, atol, adjoint, checkpoint
        self.exact_method, self.exact_chunk_size = exact_method, exact_chunk_size
        self.exact_row_chunk = exact_row_chunk
        # Set by forward (sampling) solves inside ``recording_transport_cost()``: [B, 2] integrals
        # of |v|² and ‖∂v/∂x‖²_F along each trajectory (see AugmentedDynamics).
        self.transport_cost = None
        self._record_transport_cost = False

    # -- solving ------------------------------------------------------------------------------
    def _node_features(self, b: int, extra: torch.Tensor | None = None) -> torch.Tensor | None:
        parts = []
        if self.node_features is not None:
            parts.append(self.node_features[None].expand(b, -1, -1))
        if extra is not None:
            parts.append(extra)
        return torch.cat(parts, dim=-1) if parts else None

    def _solve(self, dyn: AugmentedDynamics, state, t0: float, t1: float):
        dtype, device = state[0].dtype, state[0].device
        fixed = self.solver in FIXED_STEP_SOLVERS
        if fixed:
            ts = torch.linspace(t0, t1, self.n_steps + 1, dtype=dtype, device=device)
            kw = dict(method=self.solver)
        else:
            ts = torch.tensor([t0, t1], dtype=dtype, device=device)
            kw = dict(method=self.solver, rtol=self.rtol, atol=self.atol)
        if self.adjoint and torch.is_grad_enabled():
            # Adjoint in the field's parameters only: base parameters get gradients through z.
            out = odeint_adjoint(dyn, state, ts, adjoint_params=tuple(self.field.parameters()), **kw)
            return tuple(s[-1] for s in out)
        out = odeint(dyn, state, ts, **kw)
        return tuple(s[-1] for s in out)

    def integrate(self, x: torch.Tensor, t0: float, t1: float, h_extra: torch.Tensor | None = None,
                  divergence: str | None = "default"):
        """Solve from ``t0`` to ``t1`` starting at ``x`` ``[B, N, dim]``.

        Returns ``(x_t1 [B, N, dim], ∫_{t0}^{t1} div v dt [B])`` (zeros where ``divergence=None``).
        """
        divergence = self.divergence if divergence == "default" else divergence
        if divergence is not None and divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES} or None")
        b = x.shape[0]
        noise = (sample_noise(x.shape, self.noise, x.dtype, x.device) if divergence == "hutchinson" else None)
        record = self._record_transport_cost and t1 > t0 and divergence is not None
        dyn = AugmentedDynamics(self.field, self.n_atoms, self.dim, self._node_features(b, h_extra),
                                divergence, noise, checkpoint=self.checkpoint, transport_cost=record,
                                exact_method=self.exact_method, exact_chunk_size=self.exact_chunk_size,
                                exact_row_chunk=self.exact_row_chunk)
        state = (x.reshape(b, -1), torch.zeros(b, dtype=x.dtype, device=x.device))
        if record:
            state = state + (torch.zeros(b, 2, dtype=x.dtype, device=x.device),)
        out = self._solve(dyn, state, t0, t1)
        xf, delta = out[0], out[1]
        if record:
            self.transport_cost = out[2]
        self.nfe = dyn.nfe
        return xf.view(b, self.n_atoms, self.dim), delta

    @contextlib.contextmanager
    def recording_transport_cost(self):
        """Within this block, sampling solves store ``self.transport_cost`` ``[B, 2]``: the integrals
        of the kinetic energy ``|v|²`` and of ``‖∂v/∂x‖²_F`` along each trajectory (reverse solves,
        as in ``log_prob``, do not). Used for the RNODE-style regularizers in training."""
        old = self._record_transport_cost
        self._record_transport_cost = True
        self.transport_cost = None
        try:
            yield self
        finally:
            self._record_transport_cost = old

    # -- public API ---------------------------------------------------------------------------
    def sample(self, n: int, with_log_prob: bool = True, divergence: str | None = "default"):
        """Draw ``n`` samples. Returns ``(x [n, N, dim], log_q [n])`` (``log_q`` None if skipped).

        Reparameterized: under autograd, gradients flow from ``x`` and ``log_q`` to the parameters.
        ``n = 0`` gives empty tensors.
        """
        if n == 0:
            return self._empty(with_log_prob)
        z = self.base.sample(check_sample_count(n))
        log_pz = self._base_log_prob(z)
        div = divergence if with_log_prob else None
        x, delta = self.integrate(z, 0.0, 1.0, divergence=div)
        return x, (log_pz - delta if with_log_prob else None)

    def _empty(self, with_log_prob: bool):
        p = next(self.parameters(), None)
        kw = dict(dtype=p.dtype if p is not None else torch.get_default_dtype(),
                  device=p.device if p is not None else None)
        return torch.zeros(0, self.n_atoms, self.dim, **kw), (torch.zeros(0, **kw) if with_log_prob else None)

    def log_prob(self, x: torch.Tensor, divergence: str | None = "default") -> torch.Tensor:
        """``log q(x)`` ``[B]`` of CoM-free ``x`` ``[B, N, dim]`` by a reverse solve."""
        check_positions(x, self.n_atoms, self.dim)
        assert_com_free(x)
        z, delta = self.integrate(x, 1.0, 0.0, divergence=divergence)
        # Integrating t: 1 -> 0 gives delta = -∫_0^1 div dt.
        return self._base_log_prob(z) + delta

    def _base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        # z is CoM-free by construction (base samples, or mean-free velocities from a checked x):
        # skip the base's input check, a host sync per solve. Bases other than the isotropic Gaussian
        # (HarmonicBase) say how through ``log_prob_unchecked``.
        unchecked = getattr(self.base, "log_prob_unchecked", None)
        if unchecked is not None:
            return unchecked(z)
        return com_free_gaussian_log_prob(z, self.base.scale, self.n_atoms, self.dim)

    @property
    def solver_settings(self) -> SolverSettings:
        """The current solve as a :class:`~eqflow.solvers.SolverSettings`."""
        return SolverSettings(self.solver, self.n_steps, self.rtol, self.atol)

    @contextlib.contextmanager
    def using_solver(self, settings: SolverSettings | None):
        """Within this block, solve with ``settings`` (None: unchanged). The field is a continuous-time
        object: evaluation may solve it more accurately than training did."""
        if settings is None:
            yield self
            return
        saved = self.solver_settings
        self.set_solver(settings)
        try:
            yield self
        finally:
            self.set_solver(saved)

    def set_solver(self, settings: SolverSettings) -> None:
        """Solve with ``settings`` from now on (training refines its solve this way)."""
        self.solver, self.n_steps, self.rtol, self.atol = (settings.solver, int(settings.n_steps),
                                                           settings.rtol, settings.atol)

    def forward(self, n: int):
        return self.sample(n)
