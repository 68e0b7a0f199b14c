#!/usr/bin/env python
"""Export a training run as a small shipped model: pretrained/<name>/{checkpoint.pt, config.yaml,
summary.json, README.md} (weights and config only: no optimizer state or replay buffer).

    python scripts/export_pretrained.py runs/dw4 --name dw4 \
        --command ".venv/bin/python scripts/train_eq.py --config configs/dw4_fm.yaml --out runs/dw4"
    python scripts/export_pretrained.py runs/lj13/checkpoint.pt --name lj13 --overwrite

Load it with eqflow.load_checkpoint("pretrained/<name>"); check it reproduces its summary with
scripts/check_pretrained.py pretrained/<name>.
"""
import argparse
from pathlib import Path

from eqflow.cli import run_cli
from eqflow.pretrained import PRETRAINED_DIR, export_pretrained


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="training run folder or its checkpoint.pt")
    p.add_argument("--name", required=True, help="model name: the folder pretrained/<name>")
    p.add_argument("--command", default=None, help="the command line that made the run (recorded in README.md)")
    p.add_argument("--dest", default=str(PRETRAINED_DIR), help="parent folder (default: the repository's pretrained/)")
    p.add_argument("--overwrite", action="store_true", help="replace a model of that name")
    args = p.parse_args(argv)
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise SystemExit(f"error: --name must be a plain folder name, got {args.name!r}")
    dest = export_pretrained(args.run, Path(args.dest) / args.name, command=args.command, overwrite=args.overwrite)
    size = (dest / "checkpoint.pt").stat().st_size
    print(f"wrote {dest} (checkpoint.pt {size / 1024:.0f} KiB, config.yaml, "
          f"{'summary.json, ' if (dest / 'summary.json').exists() else ''}README.md)")


if __name__ == "__main__":
    run_cli(main)
