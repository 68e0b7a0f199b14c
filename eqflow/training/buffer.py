"""Replay buffer of model samples with importance weights to the Boltzmann distribution.

Each entry is a configuration ``x`` ``[N, dim]``, ``log q(x)`` of the model that drew it, and its
reduced energy ``u(x) = E(x) / kT`` at the buffer's temperature ``T``. Its importance log weight is
``log w = -u - log q`` (DESIGN.md, "Importance weights"), self-normalized over the buffer. When the
temperature changes, the stored energies are rescaled, ``u_new = u_old · T_old / T_new`` (the raw
energy ``E = u·kT`` is the same), never recomputed.

Weight control against degeneracy, applied in this order to the raw log weights:

1. clipping: ``log w ← min(log w, cap)`` with cap the ``clip_quantile`` quantile of the finite log
   weights and/or ``max(log w) - clip_log_ratio`` (the largest weight at most ``e^c`` times the cap);
2. tempering: ``log w ← β · log w`` (``w^β``; ``β = 1`` leaves them, ``β = 0`` makes them uniform).

:meth:`ReplayBuffer.stats` reports the ESS before and after both, as DESIGN.md asks.
"""
from __future__ import annotations

import torch

__all__ = ["ReplayBuffer"]


def _kish_ess(log_w: torch.Tensor) -> float:
    """``(Σw)² / (n·Σw²)`` as a fraction of ``n`` (``-inf`` entries are zero weights)."""
    n = log_w.shape[0]
    if n == 0 or not torch.isfinite(log_w).any():
        return 0.0
    return float((2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)).exp() / n)


class ReplayBuffer:
    """FIFO buffer of ``(x, log q, u)`` with self-normalized importance resampling.

    Storage is a ring of ``capacity`` rows allocated at the first :meth:`add` (dtype and device of
    that ``x``); once full, each new entry overwrites the oldest one (first in, first out).

    Parameters
    ----------
    capacity : maximum number of entries
    temperature : the temperature (K, or tau for particle systems) the stored ``u`` refer to
    clip_quantile : cap log weights at this quantile (in (0, 1]) of the buffer's finite log weights
    clip_log_ratio : cap log weights at ``max - clip_log_ratio`` (> 0)
    tempering : ``β`` in ``w^β``, in [0, 1]
    """

    def __init__(self, capacity: int, temperature: float = 1.0, clip_quantile: float | None = None,
                 clip_log_ratio: float | None = None, tempering: float = 1.0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if clip_quantile is not None and not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        if clip_log_ratio is not None and clip_log_ratio <= 0:
            raise ValueError(f"clip_log_ratio must be positive, got {clip_log_ratio}")
        if not 0.0 <= tempering <= 1.0:
            raise ValueError(f"tempering must be in [0, 1], got {tempering}")
        self.capacity, self.temperature = int(capacity), float(temperature)
        self.clip_quantile, self.clip_log_ratio, self.tempering = clip_quantile, clip_log_ratio, float(tempering)
        self._x = self._log_q = self._u = None
        self._ptr = 0    # next row to write
        self._size = 0   # rows filled

    def __len__(self) -> int:
        return self._size

    # -- insertion ----------------------------------------------------------------------------
    def add(self, x: torch.Tensor, log_q: torch.Tensor, u: torch.Tensor,
            temperature: float | None = None) -> int:
        """Insert a batch; rows with a non-finite ``u`` or ``log_q`` are dropped.

        Parameters
        ----------
        x : ``[n, N, dim]`` CoM-free samples (stored detached)
        log_q : ``[n]`` log-density of the model that drew them
        u : ``[n]`` reduced energies at ``temperature`` (default: the buffer's); rescaled to the buffer's
        temperature on the way in

        Returns
        -------
        The number of rows dropped.
        """
        x, log_q, u = x.detach(), log_q.detach().to(x.dtype), u.detach().to(x.dtype)
        if x.dim() != 3 or log_q.shape != x.shape[:1] or u.shape != x.shape[:1]:
            raise ValueError(f"need x [n, N, dim], log_q [n], u [n]; got {tuple(x.shape)}, "
                             f"{tuple(log_q.shape)}, {tuple(u.shape)}")
        if temperature is not None and float(temperature) != self.temperature:
            u = u * (float(temperature) / self.temperature)
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        x, log_q, u = x[ok], log_q[ok], u[ok]
        if self._x is None:
            self._x = x.new_zeros((self.capacity,) + tuple(x.shape[1:]))
            self._log_q = x.new_zeros(self.capacity)
            self._u = x.new_zeros(self.capacity)
        elif x.shape[1:] != self._x.shape[1:]:
            raise ValueError(f"x rows are {tuple(x.shape[1:])}, the buffer holds {tuple(self._x.shape[1:])}")
        x, log_q, u = (a.to(self._x.dtype) for a in (x, log_q, u))  # the first batch fixes the dtype
        # More rows than the capacity: only the newest `capacity` survive anyway.
        x, log_q, u = x[-self.capacity:], log_q[-self.capacity:], u[-self.capacity:]
        n = x.shape[0]
        rows = (self._ptr + torch.arange(n, device=self._x.device)) % self.capacity
        self._x[rows], self._log_q[rows], self._u[rows] = x, log_q, u
        self._ptr = (self._ptr + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        return int((~ok).sum())

    def _chronological(self) -> torch.Tensor:
        start = (self._ptr - self._size) % self.capacity
        return (start + torch.arange(self._size, device=self._x.device)) % self.capacity

    def data(self) -> dict[str, torch.Tensor]:
        """The entries oldest first: ``x [n, N, dim]``, ``log_q [n]``, ``u [n]``."""
        if self._x is None:
            raise ValueError("the buffer is empty")
        i = self._chronological()
        return dict(x=self._x[i], log_q=self._log_q[i], u=self._u[i])

    # -- temperature --------------------------------------------------------------------------
    def reweight_temperature(self, temperature: float) -> None:
        """Move the stored energies to a new temperature: ``u ← u · T_old / T_new`` (E unchanged)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if self._u is not None:
            self._u.mul_(self.temperature / float(temperature))
        self.temperature = float(temperature)

    # -- weights ------------------------------------------------------------------------------
    def _raw_log_weights(self) -> torch.Tensor:
        if self._size == 0:
            raise ValueError("the buffer is empty")
        n = self._size
        return -self._u[:n] - self._log_q[:n]

    def _controlled(self, raw: torch.Tensor) -> tuple[torch.Tensor, int]:
        lw = raw
        caps = []
        if self.clip_quantile is not None:
            caps.append(torch.quantile(raw, self.clip_quantile))
        if self.clip_log_ratio is not None:
            caps.append(raw.max() - self.clip_log_ratio)
        n_clipped = 0
        if caps:
            cap = torch.stack(caps).min()
            n_clipped = int((raw > cap).sum())
            lw = torch.minimum(raw, cap)
        return self.tempering * lw, n_clipped

    def log_weights(self, raw: bool = False) -> torch.Tensor:
        """Unnormalized log weights ``[n]`` in storage order (the order :meth:`sample` indexes).

        ``raw=True``: ``-u - log q`` without clipping or tempering.
        """
        lw = self._raw_log_weights()
        return lw if raw else self._controlled(lw)[0]

    def ess(self, raw: bool = False) -> float:
        """Kish ESS of the buffer, ``(Σw)² / (n·Σw²)`` as a fraction of its size."""
        return _kish_ess(self.log_weights(raw))

    def stats(self) -> dict:
        """Size, temperature, ESS before (``ess_raw``) and after weight control (``ess``), the largest
        self-normalized weight before and after (``max_weight_raw``, ``max_weight``), ``n_clipped``."""
        raw = self._raw_log_weights()
        lw, n_clipped = self._controlled(raw)
        return dict(size=self._size, temperature=self.temperature, ess_raw=_kish_ess(raw), ess=_kish_ess(lw),
                    max_weight_raw=float(torch.softmax(raw, 0).max()), max_weight=float(torch.softmax(lw, 0).max()),
                    n_clipped=n_clipped, tempering=self.tempering)

    # -- drawing ------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, resample: bool = True):
        """Draw ``n`` entries with replacement: ``(x [n, N, dim], idx [n])``.

        ``resample=True``: with probabilities equal to the self-normalized (controlled) weights, so
        ``x`` is approximately Boltzmann distributed and needs no further weighting. ``resample=False``:
        uniformly; weigh the draws with ``log_weights()[idx]`` (e.g. ``weighted_flow_matching_loss``).
        ``generator`` must live on the buffer's device.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if resample:
            probs = torch.softmax(self.log_weights(), 0)
        else:
            probs = torch.ones(self._size, dtype=self._x.dtype, device=self._x.device)
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        return self._x[idx], idx

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain tensors and numbers only (``torch.load(weights_only=True)`` reads it); exact resume."""
        n = self._size
        empty = self._x is None
        return dict(
            capacity=self.capacity, temperature=self.temperature, ptr=self._ptr, size=n,
            x=torch.zeros(0) if empty else self._x[:n].clone(),
            log_q=torch.zeros(0) if empty else self._log_q[:n].clone(),
            u=torch.zeros(0) if empty else self._u[:n].clone(),
        )

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (same capacity); the weight-control settings are the constructor's."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"the state has capacity {int(state['capacity'])}, this buffer {self.capacity}")
        self.temperature = float(state["temperature"])
        self._ptr, self._size = int(state["ptr"]), int(state["size"])
        if self._size == 0:
            self._x = self._log_q = self._u = None
            return
        x = state["x"]
        self._x = x.new_zeros((self.capacity,) + tuple(x.shape[1:]))
        self._log_q, self._u = x.new_zeros(self.capacity), x.new_zeros(self.capacity)
        self._x[: self._size], self._log_q[: self._size] = x, state["log_q"]
        self._u[: self._size] = state["u"]

    def __repr__(self) -> str:
        return (f"ReplayBuffer(size={self._size}/{self.capacity}, temperature={self.temperature}, "
                f"clip_quantile={self.clip_quantile}, clip_log_ratio={self.clip_log_ratio}, "
                f"tempering={self.tempering})")

