#!/usr/bin/env python
"""Print the metrics of DESIGN.md for a trained run against its reference (or --reference FILE).

    python scripts/evaluate.py runs/dw4
    python scripts/evaluate.py runs/lj13 --n-steps 32 --n 2000   # a finer solve than training's
    python scripts/evaluate.py runs/ala2 --reference data_cache/ala2_implicit_300K.h5 --n 2000
"""
import argparse
from pathlib import Path

import torch

from eqflow import Generator, load_checkpoint
from eqflow.cli import run_cli
from eqflow.config import apply_overrides
from eqflow.evaluation.report import evaluate_generator, format_summary, save_summary
from eqflow.training import resolve_reference


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint.pt")
    p.add_argument("--reference", default=None, help="reference file (default: the run's target.reference)")
    p.add_argument("--n", type=int, default=None, help="model samples (default eval.n_samples)")
    p.add_argument("--divergence", choices=["exact", "hutchinson"], default=None)
    p.add_argument("--solver", default=None, help="evaluation solver (default eval.solver, else the training one)")
    p.add_argument("--n-steps", type=int, default=None, help="fixed-step evaluation solver steps (eval.n_steps)")
    p.add_argument("--out", default=None, help="folder for plots and summary (default: the run folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = load_checkpoint(args.run)
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
    _, test = resolve_reference(gen.config, gen.target)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_generator(gen, test, out_dir=out, n_samples=args.n, progress=True)
    save_summary(metrics, out / "evaluation.json")
    print(format_summary(metrics, f"eqflow evaluation: {args.run}"))


if __name__ == "__main__":
    run_cli(main)
