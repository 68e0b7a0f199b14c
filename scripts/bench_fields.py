#!/usr/bin/env python
"""EGNN vs e3nn vector fields: parameters, forward time, forward + Hutchinson divergence + backward
time and peak memory at the sizes of the shipped systems (one table; each case in its own process).

    python scripts/bench_fields.py                                  # DW4, LJ13, alanine, LJ55; batch 64
    python scripts/bench_fields.py --systems ala2 --batch 64 --reps 7
    python scripts/bench_fields.py --device cuda --cueq             # + the cuequivariance backend
    python scripts/bench_fields.py --systems ala2 --compile         # + torch.compile of the e3nn field

The e3nn field is 3D only (n/a for DW4). Times in ms are medians; on CPU use one thread
(``OMP_NUM_THREADS=1``, the default here) for numbers comparable to the README's.
"""
import argparse
import os

import torch

from eqflow.benchmark import run_isolated
from eqflow.benchmark_fields import SYSTEMS, FieldCase, format_field_table, run_field_case
from eqflow.nn import cueq_available


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=5, help="timed calls per case (median reported)")
    p.add_argument("--egnn-hidden", type=int, default=32)
    p.add_argument("--egnn-layers", type=int, default=3)
    p.add_argument("--e3nn", nargs="*", default=[], metavar="KEY=VALUE",
                   help="E3NNField keyword overrides, e.g. lmax=1 edge_channels=16 hidden_irreps='32x0e+8x1o'")
    p.add_argument("--cueq", action="store_true", help="add the e3nn field on the cuequivariance backend")
    p.add_argument("--compile", action="store_true", help="add the e3nn field under torch.compile")
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak MB is then GPU memory allocated)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each case's process (CPU)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per case")
    args = p.parse_args()
    if args.cueq and not cueq_available():
        p.error("--cueq needs cuequivariance-torch: pip install 'eqflow[cueq]'")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned case processes
    e3nn_kwargs = {}
    for item in args.e3nn:
        key, value = item.split("=", 1)
        try:
            value = eval(value, {}, {})  # numbers, None; anything else stays a string
        except Exception:
            pass
        e3nn_kwargs[key] = value
    fields = ["egnn", "e3nn"] + ["e3nn-cueq"] * args.cueq + ["e3nn-compile"] * args.compile
    rows = []
    for system in args.systems:
        n, d, n_types = SYSTEMS[system]
        for kind in fields:
            case = FieldCase(kind, system, n, d, n_types, args.batch, args.reps,
                             egnn=dict(hidden=args.egnn_hidden, n_layers=args.egnn_layers), e3nn=e3nn_kwargs,
                             device=args.device)
            if kind != "egnn" and d != 3:
                rows.append(dict(field=kind, system=system, n_atoms=n, dim=d, batch=args.batch,
                                 na="e3nn fields are 3D only"))
                continue
            r = run_isolated(case, args.timeout, runner=run_field_case)
            rows.append(r)
            status = r.get("error") or f"fwd {r['forward_ms']:.1f} ms, fwd+div+bwd {r.get('full_ms', float('nan')):.1f} ms"
            print(f"[{system} {kind}] {status}", flush=True)
    print()
    print(f"batch {args.batch}, device {args.device}, {args.threads} thread(s), torch {torch.__version__}")
    print(format_field_table(rows))


if __name__ == "__main__":
    main()
