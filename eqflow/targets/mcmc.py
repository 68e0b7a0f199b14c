"""Reference samples for the particle systems by vectorized random-walk Metropolis.

Many independent chains run in lock-step as one batch. Every move perturbs all coordinates with
isotropic Gaussian noise and projects back onto the CoM-free subspace ``V``; the projection of an
isotropic Gaussian is an isotropic Gaussian on ``V``, so the proposal is symmetric there and the chain
targets ``exp(-u)`` restricted to ``V`` -- the density eqflow models (DW4 and the LJ oscillator are
translation invariant, so nothing is lost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..geometry import check_positions, remove_mean
from .energy import Energy

__all__ = [
    "MCMCResult",
    "metropolis",
    "PARTICLE_MCMC_SETTINGS",
    "initial_particle_positions",
    "sample_particle_system",
]


@dataclass
class MCMCResult:
    """Output of :func:`metropolis`.

    Attributes
    ----------
    samples : ``[n_samples, n_atoms, dim]`` CoM-free, ordered (saved step, chain).
    energies : ``[n_samples]`` reduced energies of ``samples``.
    acceptance : acceptance rate over the production (post burn-in) steps.
    step_size : proposal scale used in production (after adaptation).
    energy_trace : ``[burn_in + n_steps]`` mean energy over chains per step (for equilibration checks).
    """

    samples: torch.Tensor
    energies: torch.Tensor
    acceptance: float
    step_size: float
    energy_trace: torch.Tensor = field(repr=False)


def metropolis(energy: Energy, x0: torch.Tensor, n_steps: int, step_size: float = 0.1,
               burn_in: int = 1000, thin: int = 10, generator: torch.Generator | None = None,
               seed: int | None = None, adapt_step: bool = True,
               target_acceptance: tuple[float, float] = (0.3, 0.5), adapt_every: int = 50,
               progress: bool = True) -> MCMCResult:
    """Random-walk Metropolis on the CoM-free subspace, ``chains`` chains in parallel.

    Parameters
    ----------
    energy : reduced potential ``[chains, N, dim] -> [chains]``.
    x0 : ``[chains, N, dim]`` initial positions (CoM removed here); every energy should be finite.
    n_steps : production steps after burn-in; a sample is kept every ``thin`` of them.
    step_size : initial proposal standard deviation per coordinate.
    burn_in : steps discarded first. With ``adapt_step`` the step size is tuned during burn-in
        only (multiplicatively, every ``adapt_every`` steps, towards ``target_acceptance``), then frozen
        so that the production chain is a fixed, valid Metropolis kernel.
    thin : keep every ``thin``-th production step.
    generator, seed : randomness; ``seed`` makes a fresh generator when ``generator`` is None.
    progress : show a tqdm bar.

    Returns
    -------
    :class:`MCMCResult` with ``chains * (n_steps // thin)`` samples.

    Proposals with a non-finite energy are always rejected (NaN compares false).
    """
    check_positions(x0, energy.n_atoms, energy.dim, name="x0")
    if n_steps < thin or thin < 1:
        raise ValueError(f"need n_steps >= thin >= 1, got n_steps={n_steps}, thin={thin}")
    if generator is None:
        generator = torch.Generator(device=x0.device)
        generator.manual_seed(0 if seed is None else int(seed))
    x = remove_mean(x0.detach().clone())
    chains = x.shape[0]
    total = burn_in + n_steps
    saved_x, saved_u = [], []
    trace = torch.empty(total, dtype=x.dtype)
    accepted_prod = 0
    window_acc = 0
    step = float(step_size)
    lo, hi = target_acceptance

    iterator = range(total)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"MCMC {chains} chains", leave=False)

    with torch.no_grad():
        u = energy.energy(x)
        if not torch.isfinite(u).all():
            raise ValueError(f"{int((~torch.isfinite(u)).sum())} initial configurations have "
                             "non-finite energy; start from overlap-free positions")
        for t in iterator:
            noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            y = remove_mean(x + step * noise)
            u_y = energy.energy(y)
            log_r = torch.rand(chains, dtype=x.dtype, device=x.device, generator=generator).log()
            acc = log_r < (u - u_y)
            x = torch.where(acc[:, None, None], y, x)
            u = torch.where(acc, u_y, u)
            n_acc = int(acc.sum())
            trace[t] = u.mean()
            if t < burn_in:
                window_acc += n_acc
                if adapt_step and (t + 1) % adapt_every == 0:
                    rate = window_acc / (adapt_every * chains)
                    if rate < lo:
                        step *= 0.8 if rate > 0.1 else 0.5
                    elif rate > hi:
                        step *= 1.25 if rate < 0.9 else 2.0
                    window_acc = 0
            else:
                accepted_prod += n_acc
                if (t - burn_in + 1) % thin == 0:
                    saved_x.append(x.clone())
                    saved_u.append(u.clone())

    return MCMCResult(
        samples=remove_mean(torch.cat(saved_x, 0)),
        energies=torch.cat(saved_u, 0),
        acceptance=accepted_prod / (n_steps * chains),
        step_size=step,
        energy_trace=trace,
    )


# Settings for the reference sets: chains x (n_steps / thin) samples. DW4 and LJ13 run in a minute
# or two on one CPU core, LJ55 in several minutes. burn_in is long against the energy relaxation
# seen from the starts in sample_particle_system (hot and cold starts meet well within it).
PARTICLE_MCMC_SETTINGS = {
    # DW4's pairs hop between the wells at ~2.5 and ~5.5 slowly: from a start with four short pairs
    # the fraction of configurations with two short pairs reached 0.52 only after 5,000-10,000 steps
    # (0.38 at 1,000, 0.46 at 2,000). 2,000 steps of burn-in (the setting until 2026-12) left the
    # reference 0.11 kT high in mean energy, with the modes at 0.40 / 0.52 instead of 0.52 / 0.40.
    "dw4": dict(n_samples=40000, chains=1000, step_size=0.5, burn_in=20000, thin=25),
    "lj13": dict(n_samples=20000, chains=1000, step_size=0.05, burn_in=6000, thin=50),
    # LJ55 relaxes slowly under all-coordinate moves (165 dimensions, steps ~0.01): few chains, a
    # long burn-in, and a lower acceptance target (~0.25 is near-optimal for high-dimensional RWM).
    "lj55": dict(n_samples=5000, chains=100, step_size=0.01, burn_in=30000, thin=200,
                 target_acceptance=(0.2, 0.35)),
}


def initial_particle_positions(n_atoms: int, dim: int, chains: int, spacing: float,
                               jitter: float = 0.05, generator: torch.Generator | None = None,
                               dtype=torch.float64, lattice: str = "cubic") -> torch.Tensor:
    """Compact, overlap-free starts on a lattice, jittered, CoM removed.

    Parameters
    ----------
    n_atoms, dim : configuration shape.
    chains : number of configurations.
    spacing : nearest-neighbour distance of the lattice.
    jitter : Gaussian noise added per coordinate, relative to ``spacing``.
    lattice : ``"cubic"``: a random subset of the smallest cubic grid holding ``n_atoms`` points
        (loose, a different shape per chain). ``"fcc"`` (3D only): the ``n_atoms`` face-centred-cubic
        sites nearest a randomly shifted centre, randomly rotated -- close packed, near the
        Lennard-Jones minima (13 and 55 sites about the origin are Mackay-like cuboctahedra).

    Returns
    -------
    ``[chains, n_atoms, dim]``.
    """
    if lattice == "cubic":
        side = math.ceil(n_atoms ** (1.0 / dim) - 1e-9)
        if side ** dim < n_atoms:
            side += 1
        axes = [torch.arange(side, dtype=dtype)] * dim
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim) * spacing
        # A random subset per chain so the chains do not all start from the same shape.
        keys = torch.rand(chains, grid.shape[0], generator=generator, dtype=dtype)
        x = grid[keys.argsort(dim=1)[:, :n_atoms]]
    elif lattice == "fcc":
        if dim != 3:
            raise ValueError("the fcc lattice needs dim = 3")
        side = math.ceil((n_atoms / 4) ** (1 / 3)) + 2
        r = torch.arange(-side, side + 1, dtype=dtype)
        pts = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        pts = pts[(pts.sum(-1) % 2) == 0] * (spacing / math.sqrt(2))  # nearest neighbours at spacing
        centre = 0.2 * spacing * torch.randn(chains, 1, 3, generator=generator, dtype=dtype)
        dist = (pts[None] - centre).norm(dim=-1)
        x = pts[dist.argsort(dim=1)[:, :n_atoms]]
        from ..geometry import random_rotations
        x = x @ random_rotations(chains, 3, dtype=dtype, generator=generator).transpose(-1, -2)
    else:
        raise ValueError(f"unknown lattice {lattice!r}; use 'cubic' or 'fcc'")
    x = x + jitter * spacing * torch.randn(x.shape, generator=generator, dtype=dtype)
    return remove_mean(x)


def sample_particle_system(name: str, n_samples: int | None = None, chains: int | None = None,
                           seed: int = 0, progress: bool = True, **overrides):
    """Run the reference MCMC for ``"dw4"``, ``"lj13"`` or ``"lj55"``.

    Parameters
    ----------
    name : system name (see ``PARTICLE_MCMC_SETTINGS``).
    n_samples, chains : override the defaults; ``n_steps`` follows as
        ``ceil(n_samples / chains) * thin``.
    seed : seeds the initial positions and the chain.
    overrides : ``step_size``, ``burn_in``, ``thin``.

    Returns
    -------
    (result, energy, settings) : :class:`MCMCResult` truncated to ``n_samples``, the target, and the
    settings actually used.
    """
    from .registry import make_target

    key = name.lower()
    if key not in PARTICLE_MCMC_SETTINGS:
        raise ValueError(f"no MCMC settings for {name!r}; known: {', '.join(PARTICLE_MCMC_SETTINGS)}")
    cfg = dict(PARTICLE_MCMC_SETTINGS[key])
    if n_samples is not None:
        cfg["n_samples"] = int(n_samples)
    if chains is not None:
        cfg["chains"] = int(chains)
    cfg.update(overrides)
    cfg["chains"] = min(cfg["chains"], cfg["n_samples"])
    target = make_target(key)
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    c = cfg["chains"]
    if key == "dw4":
        # Pairs prefer ~2.5 or ~5.5 apart (barrier at 4). Half the chains start on a square of side 3
        # (four short pairs), half on one of side 6 (none): the two halves must agree after burn-in,
        # the equilibration check reported in cfg["mean_energy_by_start"].
        cold = initial_particle_positions(target.n_atoms, target.dim, c // 2, 3.0, generator=gen)
        hot = initial_particle_positions(target.n_atoms, target.dim, c - c // 2, 6.0, generator=gen)
        x0 = torch.cat([cold, hot])
        start_names = ("short_pairs", "long_pairs")
    else:
        # Half the chains start close packed (below the equilibrium energy at tau = 1), half on a loose
        # cubic grid (above it). Agreement of the two halves after burn-in is the equilibration check
        # reported in cfg["mean_energy_by_start"].
        cold = initial_particle_positions(target.n_atoms, target.dim, c // 2, 1.0, generator=gen,
                                          lattice="fcc")
        hot = initial_particle_positions(target.n_atoms, target.dim, c - c // 2, 1.1, generator=gen)
        x0 = torch.cat([cold, hot])
        start_names = ("close_packed", "loose_grid")
    n_steps = math.ceil(cfg["n_samples"] / c) * cfg["thin"]
    res = metropolis(target, x0, n_steps=n_steps, step_size=cfg["step_size"], burn_in=cfg["burn_in"],
                     thin=cfg["thin"], generator=gen, progress=progress,
                     target_acceptance=cfg.get("target_acceptance", (0.3, 0.5)))
    chain = torch.arange(res.energies.shape[0]) % c
    cfg["mean_energy_by_start"] = {start_names[0]: float(res.energies[chain < c // 2].mean()),
                                   start_names[1]: float(res.energies[chain >= c // 2].mean())}
    res.samples = res.samples[: cfg["n_samples"]]
    res.energies = res.energies[: cfg["n_samples"]]
    cfg["n_steps"] = n_steps
    return res, target, cfg
