#!/usr/bin/env python
"""Draw samples with log weights from a trained run.

    python scripts/sample.py runs/dw4 --n 10000 --out samples.npz
    python scripts/sample.py runs/ala2 --n 1000 --out samples.npz --export samples.pdb

The .npz holds x [n, N, dim], log_q [n], u [n] (raw reduced energies) and log_w = -u - log_q; for
molecules D samples are folded to L first (log_q + log 2, DESIGN.md) and the D fraction is stored.
"""
import argparse

import numpy as np
import torch

from eqflow import load_checkpoint
from eqflow.cli import run_cli
from eqflow.evaluation.report import energies_in_batches, fold_samples


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--out", default="samples.npz")
    p.add_argument("--divergence", choices=["exact", "hutchinson"], default=None,
                   help="log-density estimator (default: the config's eval.divergence)")
    p.add_argument("--export", default=None, help="molecules: also write a .pdb/.dcd/.h5 of the samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = load_checkpoint(args.run)
    x, log_q = gen.sample(args.n, divergence=args.divergence, progress=True)
    x, log_q, extra = fold_samples(gen, x, log_q)  # reflection-symmetric models: mirror images folded
    u = energies_in_batches(gen.target, x, gen.batch_size)
    log_w = -u - log_q
    np.savez(args.out, x=x.numpy(), log_q=log_q.numpy(), u=u.numpy(), log_w=log_w.numpy(), **extra)
    print(f"wrote {args.n} samples to {args.out}")
    if args.export:
        from eqflow.evaluation.trajectory import export_samples
        print("exported:", ", ".join(export_samples(x, gen.target.topology, args.export)))


if __name__ == "__main__":
    run_cli(main)
