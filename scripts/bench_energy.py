#!/usr/bin/env python
"""Energy + force throughput of the OpenMM bridge for alanine dipeptide, batches of 256.

Compares: one process on the Reference and on the CPU platform, and 1 and 2 worker processes.
Configurations: MD frames if a reference trajectory exists (--frames), else the PDB geometry with
Gaussian noise (0.01 nm). Prints one table; numbers depend on machine load.

    python scripts/bench_energy.py --solvent implicit --repeats 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from eqflow.targets.molecular import alanine_dipeptide
from eqflow.targets.openmm_bridge import OpenMMEnergy


def _configs(mol, batch: int, frames: str | None, seed: int) -> tuple[torch.Tensor, str]:
    if frames and os.path.exists(frames):
        from eqflow.evaluation.trajectory import load_md_reference

        ref = load_md_reference(frames)
        idx = torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))[:batch]
        return ref.positions[idx], f"MD frames from {frames}"
    g = torch.Generator().manual_seed(seed)
    x = mol.positions[None].repeat(batch, 1, 1)
    return x + 0.01 * torch.randn(x.shape, dtype=x.dtype, generator=g), "PDB geometry + 0.01 nm noise"


def _bench(energy: OpenMMEnergy, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    # Warm-up builds the Context / starts the workers; not timed.
    energy.energy_and_force(x[:4])
    times = []
    for _ in range(repeats):
        xr = x.clone().requires_grad_(True)
        t = time.perf_counter()
        u = energy(xr)
        u.sum().backward()  # forces come with the forward call; backward is a multiply
        times.append(time.perf_counter() - t)
    best = min(times)
    return len(x) / best, best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solvent", choices=["vacuum", "implicit"], default="implicit")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frames", default="data_cache/ala2_implicit_300K.h5")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    mol = alanine_dipeptide(a.solvent)
    x, source = _configs(mol, a.batch, a.frames, a.seed)
    setups = [
        ("1 process, Reference", dict(n_workers=0, platform="Reference")),
        ("1 process, CPU (1 thread)", dict(n_workers=0, platform="CPU")),
        ("1 worker, Reference", dict(n_workers=1, platform="Reference")),
        ("2 workers, Reference", dict(n_workers=2, platform="Reference")),
        ("2 workers, CPU (1 thread each)", dict(n_workers=2, platform="CPU")),
    ]
    print(f"alanine dipeptide, {a.solvent}, batch {a.batch}, {source}; best of {a.repeats}; "
          f"{os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'setup':34s} {'conf/s':>10s} {'ms/batch':>10s} {'vs 1 proc Ref':>14s}")
    base = None
    for name, kw in setups:
        with OpenMMEnergy(mol.system, mol.temperature, **kw) as e:
            rate, sec = _bench(e, x, a.repeats)
        base = base or rate
        print(f"{name:34s} {rate:10.0f} {1e3 * sec:10.1f} {rate / base:13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
