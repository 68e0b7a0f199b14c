"""Temperature annealing: a ladder of temperatures from high T down to the target, by training step.

Rung ``r`` (temperature ``T_r``) covers steps ``[start_r, start_{r+1})``; the last rung, the target
temperature, starts at ``start_{K-1}`` and lasts for the rest of training. Energies are reduced at the
current rung's temperature, ``u_T(x) = E(x) / (k_B·T)`` (DESIGN.md, "Temperature"); a replay buffer
is moved to the new temperature with ``ReplayBuffer.reweight_temperature``.
"""
from __future__ import annotations

import bisect
import math

import torch

__all__ = ["TemperatureLadder", "geometric_ladder"]


def geometric_ladder(t_high: float, t_target: float, n: int) -> list[float]:
    """``n`` temperatures ``T_i = T_high · (T_target / T_high)^(i / (n-1))``, ``T_0 = T_high`` and
    ``T_{n-1} = T_target`` exactly (constant ratio between neighbours, as in replica exchange).

    ``n = 1`` gives ``[T_target]``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if t_high <= 0 or t_target <= 0:
        raise ValueError(f"temperatures must be positive, got {t_high} and {t_target}")
    if t_high < t_target:
        raise ValueError(f"annealing goes from high to low: T_high={t_high} < T_target={t_target}")
    if n == 1:
        return [float(t_target)]
    ratio = math.log(t_target / t_high)
    out = [t_high * math.exp(ratio * i / (n - 1)) for i in range(n)]
    out[0], out[-1] = float(t_high), float(t_target)  # exact endpoints despite rounding
    return out


class TemperatureLadder:
    """Piecewise-constant temperature by step.

    Parameters
    ----------
    temperatures : ``[T_high, ..., T_target]``, non-increasing, positive
    steps_per_rung : steps spent on each rung before the last: an int for all, or a sequence of
        ``K - 1`` ints (a sequence of ``K`` is accepted; its last entry is the last rung's nominal
        length, which ends nothing: the target rung lasts for ever)

    Use :meth:`from_fractions` to give the rungs as fractions of a step budget.
    """

    def __init__(self, temperatures, steps_per_rung):
        temps = [float(t) for t in temperatures]
        if not temps:
            raise ValueError("temperatures must not be empty")
        if any(t <= 0 for t in temps):
            raise ValueError(f"temperatures must be positive, got {temps}")
        if any(b > a for a, b in zip(temps, temps[1:])):
            raise ValueError(f"temperatures must not increase (high T first, target last), got {temps}")
        k = len(temps)
        if isinstance(steps_per_rung, int):
            lengths = [steps_per_rung] * (k - 1)
        else:
            lengths = [int(s) for s in steps_per_rung]
            if len(lengths) == k:
                lengths = lengths[:-1]
            if len(lengths) != k - 1:
                raise ValueError(f"steps_per_rung needs {k - 1} (or {k}) entries for {k} temperatures, "
                                 f"got {len(lengths)}")
        if any(s < 0 for s in lengths):
            raise ValueError(f"steps_per_rung must be non-negative, got {lengths}")
        self.temperatures = temps
        self.starts = [0]
        for s in lengths:
            self.starts.append(self.starts[-1] + s)

    @classmethod
    def from_fractions(cls, temperatures, total_steps: int, fractions) -> "TemperatureLadder":
        """Rung ``r < K-1`` lasts about ``fractions[r] · total_steps`` steps (``K-1`` fractions, sum
        ≤ 1); the target rung has the rest, e.g. ``fractions=[0.2, 0.2]`` spends the last 60 % at T_target.

        Rung ``r`` starts at ``floor(total_steps · Σ_{s<r} fractions[s])`` (cumulative, so rounding
        errors do not add up).
        """
        fr = [float(f) for f in fractions]
        if len(fr) != len(temperatures) - 1:
            raise ValueError(f"need {len(temperatures) - 1} fractions for {len(temperatures)} temperatures, "
                             f"got {len(fr)}")
        if any(f < 0 for f in fr) or sum(fr) > 1 + 1e-12:
            raise ValueError(f"fractions must be non-negative and sum to at most 1, got {fr}")
        bounds, acc = [0], 0.0
        for f in fr:
            acc += f
            bounds.append(math.floor(acc * total_steps + 1e-9))
        return cls(temperatures, [b - a for a, b in zip(bounds, bounds[1:])])

    @property
    def n_rungs(self) -> int:
        return len(self.temperatures)

    @property
    def target(self) -> float:
        return self.temperatures[-1]

    def rung_at(self, step: int) -> int:
        """Index of the rung in force at ``step`` (0-based; steps before 0 count as 0)."""
        return bisect.bisect_right(self.starts, max(int(step), 0)) - 1

    def temperature_at(self, step: int) -> float:
        """Temperature in force at ``step``."""
        return self.temperatures[self.rung_at(step)]

    def state_dict(self) -> dict:
        """Plain tensors (``torch.load(weights_only=True)`` reads them)."""
        return dict(temperatures=torch.tensor(self.temperatures, dtype=torch.float64),
                    starts=torch.tensor(self.starts, dtype=torch.long))

    def load_state_dict(self, state: dict) -> None:
        self.temperatures = [float(t) for t in state["temperatures"].tolist()]
        self.starts = [int(s) for s in state["starts"].tolist()]

    def __repr__(self) -> str:
        return f"TemperatureLadder(temperatures={self.temperatures}, starts={self.starts})"
