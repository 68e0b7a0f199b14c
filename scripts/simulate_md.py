#!/usr/bin/env python
"""Reference MD for a molecule: Langevin dynamics, optionally temperature replica exchange.

Default: alanine dipeptide, amber99sbildn + OBC implicit solvent, 300 K, no constraints, 1 fs.

    python scripts/simulate_md.py --replicas 5 --tmax 700 --ns 10 \
        --output data_cache/ala2_implicit_300K.h5          # add --resume to continue after a stop
"""
from __future__ import annotations

import argparse
import json
import sys

from eqflow.targets.md import REMDConfig, run_replica_exchange, temperature_ladder
from eqflow.targets.molecular import MolecularSystem, alanine_dipeptide


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pdb", help="any PDB instead of alanine dipeptide")
    p.add_argument("--forcefield", nargs="+", default=["amber99sbildn.xml"], help="with --pdb")
    p.add_argument("--solvent", choices=["vacuum", "implicit"], default="implicit")
    p.add_argument("--temperature", type=float, default=300.0, help="K, the saved replica")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--tmax", type=float, default=700.0, help="K, top of the geometric ladder")
    p.add_argument("--ns", type=float, default=1.0, help="production per replica, ns")
    p.add_argument("--equil-ps", type=float, default=100.0)
    p.add_argument("--timestep-fs", type=float, default=1.0)
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--save-ps", type=float, default=1.0, help="frame interval, ps")
    p.add_argument("--exchange-ps", type=float, default=0.5, help="exchange interval, ps")
    p.add_argument("--checkpoint-ps", type=float, default=200.0)
    p.add_argument("--platform", choices=["Reference", "CPU"], default="Reference",
                   help="Reference is the faster one for a 22-atom molecule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="data_cache/ala2_implicit_300K.h5")
    p.add_argument("--checkpoint", help="default: <output stem>.ckpt.npz")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    if a.pdb:
        ff = tuple(a.forcefield) + (("amber96_obc.xml",) if a.solvent == "implicit" else ())
        mol = MolecularSystem(a.pdb, forcefield=ff, temperature=a.temperature)
        name = a.pdb
    else:
        mol = alanine_dipeptide(a.solvent, temperature=a.temperature)
        name = "alanine dipeptide"

    steps_per_ps = 1000.0 / a.timestep_fs
    ex = max(1, round(a.exchange_ps * steps_per_ps))

    def steps(ps):  # round to whole exchange cycles
        return int(round(ps * steps_per_ps / ex)) * ex

    cfg = REMDConfig(
        temperatures=[float(t) for t in temperature_ladder(a.temperature, a.tmax, a.replicas)],
        n_steps=steps(a.ns * 1000), equilibration_steps=steps(a.equil_ps), timestep_fs=a.timestep_fs,
        friction_per_ps=a.friction, save_interval=max(ex, steps(a.save_ps)), exchange_interval=ex,
        checkpoint_interval=max(ex, steps(a.checkpoint_ps)), platform=a.platform, seed=a.seed)
    meta = dict(system=name, pdb=mol.pdb_path, forcefield=list(mol.forcefield_files), solvent=a.solvent,
                constraints=None, nonbonded="NoCutoff")
    out = run_replica_exchange(mol.system, mol.topology, mol.positions.numpy(), a.output, cfg,
                               checkpoint=a.checkpoint, resume=a.resume, metadata=meta,
                               progress=not a.no_progress)
    print(json.dumps({k: out[k] for k in ("n_frames", "temperatures", "exchange_acceptance")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
