#!/usr/bin/env python
"""Train an equivariant flow on a target from a YAML config.

    python scripts/train_eq.py --config configs/dw4.yaml
    python scripts/train_eq.py --config configs/lj13.yaml --set train.budget_minutes=60 --out runs/lj13
    python scripts/train_eq.py --config configs/dw4.yaml --out runs/dw4 --resume
    python scripts/train_eq.py --config configs/dw4.yaml --out runs/dw4 --overwrite   # start over

SIGINT (Ctrl-C) or SIGTERM save a checkpoint and stop; --resume continues exactly.

The run folder gets config.yaml, checkpoint.pt, metrics.jsonl, training_curves.png, energy and
distance (or Ramachandran) histograms, and summary.json; the summary table is printed at the end.
"""
import argparse
from pathlib import Path

from eqflow.cli import run_cli
from eqflow.config import apply_overrides, load_config
from eqflow.training import run_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. train.steps=200 flow.n_steps=10")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (overrides train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    cfg = apply_overrides(cfg, overrides)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    run_training(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                 evaluate=not args.no_eval)


if __name__ == "__main__":
    run_cli(main)
