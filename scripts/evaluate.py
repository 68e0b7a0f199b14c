#!/usr/bin/env python
"""Print the metrics of DESIGN.md for a trained run against its reference (or --reference FILE).

    python scripts/evaluate.py runs/dw4
    python scripts/evaluate.py runs/lj13 --n-steps 32 --n 2000   # a finer solve than training's
    python scripts/evaluate.py runs/ala2 --reference data_cache/ala2_implicit_300K.h5 --n 2000
    python scripts/evaluate.py runs/lj13 --samples lj13.npz      # score the samples of scripts/sample.py
    torchrun --standalone --nproc_per_node=4 scripts/evaluate.py runs/lj13 --n-samples 100000

Under torchrun every rank draws its share of --n (seeds as in scripts/sample.py) and scores its share
of the NLL reference points; samples and log-densities are gathered to rank 0 before the ESS and the
other metrics, which are then the numbers one process computes on the same samples. Rank 0 alone
writes the plots and evaluation.json.
"""
import argparse
from pathlib import Path

from eqflow import Generator, load_checkpoint
from eqflow import distributed as dd
from eqflow.cli import run_cli
from eqflow.config import apply_overrides
from eqflow.evaluation.report import evaluate_generator, format_summary, save_summary
from eqflow.training import resolve_reference
from eqflow.training.run import check_device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("--reference", default=None, help="reference file (default: the run's target.reference)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-n", "--n", "--n-samples", dest="n", type=int, default=None,
                     help="model samples (default eval.n_samples; under torchrun write -n or --n-samples)")
    src.add_argument("--samples", default=None, help="score this samples file of scripts/sample.py instead")
    p.add_argument("--divergence", choices=["exact", "hutchinson", "auto"], default=None)
    p.add_argument("--solver", default=None, help="evaluation solver (default eval.solver, else the training one)")
    p.add_argument("--n-steps", type=int, default=None, help="fixed-step evaluation solver steps (eval.n_steps)")
    p.add_argument("--out", default=None, help="folder for plots and summary (default: the run folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per rank)")
    args = p.parse_args(argv)
    check_device(args.device)
    if args.samples and not Path(args.samples).exists():
        raise FileNotFoundError(f"samples file not found: {args.samples}")
    with dd.process_group(args.device) as info:
        gen = load_checkpoint(args.run)
        gen.model.to(dd.rank_device(args.device, info))
        overrides = []
        if args.reference:
            overrides.append(f"target.reference={args.reference}")
        if args.divergence:
            overrides.append(f"eval.divergence={args.divergence}")
        if args.solver:
            overrides.append(f"eval.solver={args.solver}")
        if args.n_steps:
            overrides.append(f"eval.n_steps={args.n_steps}")
        gen = Generator(gen.model, gen.target, apply_overrides(gen.config, overrides))
        # rank 0 may generate and cache the reference; the others wait for its file
        _, test = resolve_reference(gen.config, gen.target, progress=info.is_main, generate=info.is_main)
        run = Path(args.run)
        out = Path(args.out) if args.out else (run if run.is_dir() else run.parent)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        metrics = evaluate_generator(gen, test, out_dir=out, n_samples=args.n, progress=True, samples=args.samples,
                                     seed=args.seed, distributed=True)
        if info.is_main:
            save_summary(metrics, out / "evaluation.json")
            print(format_summary(metrics, f"eqflow evaluation: {args.run}"))


if __name__ == "__main__":
    run_cli(main)
