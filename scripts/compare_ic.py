#!/usr/bin/env python
"""Cartesian E(3) flow vs internal-coordinate flow on the same system, budget and metrics.

    python scripts/compare_ic.py --minutes 30 --out runs/compare_ml                     # ML on MD frames
    python scripts/compare_ic.py --minutes 30 --out runs/compare_kl --set train.kl_weight=1 train.ml_weight=0
    python scripts/compare_ic.py --out runs/compare_ml --load                           # re-evaluate

Trains both models (configs/ala2_ml.yaml and configs/ala2_ic.yaml by default; --set applies to both)
for the same wall-clock budget, in parallel processes with one thread each unless --sequential,
then evaluates both on the same held-out MD frames and prints one table: ESS, NLL (same measure),
ΔF(phi) and its error with bootstrap error bar, Ramachandran KL, basin populations, fraction of D
samples, seconds per step, samples per second with log weights, energy evaluations. The figure
ramachandran_compare.png (models raw and reweighted, MD reference) goes to --out.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from eqflow.cli import run_cli
from eqflow.comparison import compare_runs, format_comparison
from eqflow.config import apply_overrides, load_config
from eqflow.errors import EqflowError
from eqflow.training import resolve_reference

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eq-config", default=str(ROOT / "configs" / "ala2_ml.yaml"), help="eqflow (Cartesian) model")
    p.add_argument("--ic-config", default=str(ROOT / "configs" / "ala2_ic.yaml"), help="IC baseline model")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget of each model (wall clock)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied to both configs")
    p.add_argument("--out", default="runs/compare_ic", help="folder: eqflow/, ic/, comparison.json, figure")
    p.add_argument("--load", action="store_true", help="evaluate existing runs in --out, no training")
    p.add_argument("--sequential", action="store_true", help="train one model after the other")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.add_argument("--n-samples", type=int, default=None, help="model samples per evaluation (default eval.n_samples)")
    args = p.parse_args(argv)
    out = Path(args.out)
    configs = {"eqflow": args.eq_config, "ic": args.ic_config}
    cfgs = {k: apply_overrides(load_config(v), [*args.set, f"train.budget_minutes={args.minutes}"])
            for k, v in configs.items()}
    if not args.load:
        procs = {}
        for name, path in configs.items():
            cmd = [sys.executable, str(ROOT / "scripts" / "train_eq.py"), "--config", path, "--out", str(out / name),
                   "--no-eval", "--no-progress", "--set", *args.set, f"train.budget_minutes={args.minutes}"]
            if args.overwrite:
                cmd.append("--overwrite")
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            print(f"training {name}: {' '.join(cmd[1:])}", file=sys.stderr)
            procs[name] = subprocess.Popen(cmd, env=env)
            if args.sequential:
                procs[name].wait()
        failed = [n for n, pr in procs.items() if pr.wait() != 0]
        if failed:
            raise EqflowError(f"training failed for {', '.join(failed)} (see the messages above)")
    torch.set_num_threads(1)
    _, test = resolve_reference(cfgs["eqflow"])
    results = compare_runs({n: out / n for n in configs}, test, out_dir=out, n_samples=args.n_samples)
    (out / "comparison.json").write_text(json.dumps(results, indent=2, default=str))
    print(format_comparison(results, f"eqflow vs IC flow ({args.minutes:g} min each; {out})"))


if __name__ == "__main__":
    run_cli(main)
