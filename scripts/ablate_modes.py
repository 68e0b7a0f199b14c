#!/usr/bin/env python
"""Ablation of the data-free objectives on one system, the same wall-clock budget per variant, one table.

    python scripts/ablate_modes.py --out runs/ablation_ala2                       # 6 variants x 30 min
    python scripts/ablate_modes.py --out runs/ablation_ala2 --resume              # skip finished variants
    python scripts/ablate_modes.py --out runs/ablation_ala2 --variants rkl best --jobs 2
    python scripts/ablate_modes.py --config-set dw4 --budget-minutes 5 --out runs/ablation_dw4
    python scripts/ablate_modes.py --config-set my_variants.yaml --out runs/mine   # own variants
    python scripts/ablate_modes.py --out runs/ablation_ala2 --table-only          # reprint the table

Variants of the default set (alanine dipeptide, implicit solvent, 300 K; eqflow/ablation.py):
rkl (plain reverse KL, configs/ala2_implicit.yaml), fm (importance-weighted flow matching on the
replay buffer), fm+anneal, fm+mixture, fm+harmonic, best (all combined). Each trains and evaluates
with scripts/train_eq.py into <out>/<variant>/ (log in <out>/logs/); the table (ESS with its
divergence, NLL, ΔF(phi) with bootstrap error against the MD reference, P(phi>0) raw and reweighted,
Ramachandran KL, energy W1, energy evaluations, wall time, seconds per step, steps) is read from the
runs' summary.json files and written to <out>/ablation_table.txt and <out>/ablation.json.
"""
import argparse
import json
import sys
from pathlib import Path

from eqflow.ablation import (ablation_notes, ablation_title, collect_results, format_ablation, load_variant_set,
                             run_ablation, variant_config)
from eqflow.cli import run_cli
from eqflow.errors import EqflowError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-set", default="ala2", help="built-in variant set (ala2, dw4) or a YAML variants file")
    p.add_argument("--variants", nargs="*", default=None, help="run only these variants (default: all of the set)")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training wall-clock budget per variant")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied to every variant")
    p.add_argument("--out", default="runs/ablation", help="folder: <variant>/, logs/, ablation_table.txt")
    p.add_argument("--resume", action="store_true", help="skip finished variants, continue interrupted ones")
    p.add_argument("--overwrite", action="store_true", help="replace variant runs already in --out")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at a time (one torch thread each if > 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per variant (default: 1 if --jobs > 1)")
    p.add_argument("--table-only", action="store_true", help="no training: print the table of the runs in --out")
    p.add_argument("--dry-run", action="store_true", help="validate the variant configs and print them, no training")
    args = p.parse_args(argv)
    vset = load_variant_set(args.config_set)
    variants = vset.select(args.variants)
    names = [v.name for v in variants]
    out = Path(args.out)
    if args.dry_run:
        for v in variants:
            cfg = variant_config(vset, v, args.set, args.budget_minutes)
            print(f"{v.name}: {v.description}\n  config {v.config_path(vset.base_dir)}\n  overrides "
                  f"{' '.join([*vset.common, *v.overrides, *args.set]) or '-'}\n  objective kl={cfg.train.kl_weight} "
                  f"fm={cfg.train.fm_weight} base={cfg.flow.base} components={cfg.flow.n_components} "
                  f"anneal={cfg.anneal.temperatures}")
        return
    status = None
    if not args.table_only:
        status = run_ablation(vset, out, names, budget_minutes=args.budget_minutes, extra=args.set, jobs=args.jobs,
                              resume=args.resume, overwrite=args.overwrite, threads=args.threads,
                              log=lambda msg: print(msg, file=sys.stderr, flush=True))
    results = collect_results(out, names, status)
    table = format_ablation(results, ablation_title(vset, names, args.budget_minutes, args.set))
    notes = ablation_notes(out, results)
    text = table + ("\n" + "\n".join("note: " + n for n in notes) if notes else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation_table.txt").write_text(text + "\n")
    (out / "ablation.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)
    failed = [n for n, m in results.items() if m.get("status") in ("failed", "missing")]
    if failed:
        raise EqflowError(f"variants without results: {', '.join(failed)} (logs in {out / 'logs'})")


if __name__ == "__main__":
    run_cli(main)
