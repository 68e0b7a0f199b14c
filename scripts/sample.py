#!/usr/bin/env python
"""Draw samples with log weights from a trained run, in one process or several (torchrun).

    python scripts/sample.py runs/dw4 --n 10000 --out samples.npz
    python scripts/sample.py runs/ala2 --n 1000 --out samples.npz --export samples.pdb
    torchrun --standalone --nproc_per_node=4 scripts/sample.py runs/lj13 --n-samples 1000000 --out lj13.npz

The .npz holds x [n, N, dim], log_q [n], u [n] (raw reduced energies) and log_w = -u - log_q; for
molecules D samples are folded to L first (log_q + log 2, DESIGN.md) and the D fraction is stored.
Under torchrun rank r draws its share with its own seed stream (seed, world size, r) into
<stem>.rank<r>-of-<W>.npz; rank 0 merges the shards in rank order into --out (adding shard_sizes)
and removes them unless --keep-shards. One process with --seed s draws what evaluate.py --seed s
scores (eqflow.evaluation.sampling).
"""
import argparse

from eqflow import distributed as dd
from eqflow import load_checkpoint
from eqflow.cli import run_cli
from eqflow.evaluation.sampling import sample_to_file
from eqflow.training.run import check_device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("-n", "--n", "--n-samples", dest="n", type=int, default=10000,
                   help="samples in all, over every rank (under torchrun write -n or --n-samples: torchrun "
                        "takes --n for an abbreviation of its own options)")
    p.add_argument("--out", default="samples.npz")
    p.add_argument("--divergence", choices=["exact", "hutchinson", "auto"], default=None,
                   help="log-density estimator (default: the config's eval.divergence)")
    p.add_argument("--export", default=None, help="molecules: also write a .pdb/.dcd/.h5 of the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per rank)")
    p.add_argument("--keep-shards", action="store_true", help="torchrun: keep the per-rank shard files")
    args = p.parse_args(argv)
    check_device(args.device)
    with dd.process_group(args.device) as info:
        gen = load_checkpoint(args.run)
        gen.model.to(dd.rank_device(args.device, info))
        samples = sample_to_file(gen, args.n, args.out, seed=args.seed, divergence=args.divergence,
                                 keep_shards=args.keep_shards, progress=True)
        if samples is not None and args.export:
            from eqflow.evaluation.trajectory import export_samples
            print("exported:", ", ".join(export_samples(samples["x"], gen.target.topology, args.export)))


if __name__ == "__main__":
    run_cli(main)
