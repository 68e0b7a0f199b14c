#!/usr/bin/env python
"""Generate MCMC reference samples for a particle system (DW4, LJ13, LJ55).

    python scripts/make_reference.py --system lj13 [--out PATH] [--n-samples N] [--chains C] [--seed S]

Writes ``data_cache/<system>_mcmc_seed<S>.npz`` by default (see eqflow.distributions.reference) and
prints the acceptance and an energy summary. An existing file with enough samples is reused unless
``--force`` is given.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqflow.distributions.reference import (ensure_particle_reference, load_reference,  # noqa: E402
                                            reference_path)
from eqflow.targets.mcmc import PARTICLE_MCMC_SETTINGS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", required=True, choices=sorted(PARTICLE_MCMC_SETTINGS))
    ap.add_argument("--out", type=Path, default=None, help="output .npz (default: the data_cache path)")
    ap.add_argument("--cache-dir", default="data_cache")
    ap.add_argument("--n-samples", type=int, default=None)
    ap.add_argument("--chains", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="regenerate even if the file exists")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for these small batched ops on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = args.out or reference_path(args.system, args.cache_dir, args.seed)
    if args.force and path.exists():
        path.unlink()
    t0 = time.perf_counter()
    path = ensure_particle_reference(args.system, cache_dir=args.cache_dir, n_samples=args.n_samples,
                                     seed=args.seed, chains=args.chains, progress=not args.no_progress,
                                     path=path)
    ref = load_reference(path)
    u = ref.energies
    m = ref.meta
    # Production samples are stored in time order: a drift between halves flags poor equilibration.
    half = len(u) // 2
    print(f"{path}  ({time.perf_counter() - t0:.1f} s)")
    print(f"system={m.get('system')} n_samples={len(u)} chains={m.get('chains')} steps={m.get('steps')} "
          f"burn_in={m.get('burn_in')} thin={m.get('thin')} step_size={m.get('step_size', float('nan')):.4g}")
    print(f"acceptance={m.get('acceptance', float('nan')):.3f}")
    print(f"energy mean={u.mean().item():.3f} std={u.std().item():.3f} min={u.min().item():.3f} "
          f"max={u.max().item():.3f}  (first half {u[:half].mean().item():.3f}, second half "
          f"{u[half:].mean().item():.3f})")
    if m.get("mean_energy_by_start"):
        print("mean energy by start (equilibration check):", m["mean_energy_by_start"])
    i, j = torch.triu_indices(ref.positions.shape[1], ref.positions.shape[1], 1)
    d = (ref.positions[:, i] - ref.positions[:, j]).norm(dim=-1)
    print(f"pair distance mean={d.mean().item():.3f} min={d.min().item():.3f} max={d.max().item():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
