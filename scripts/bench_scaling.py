#!/usr/bin/env python
"""Data-parallel scaling on this machine: 1 and K ranks (torchrun, gloo, one thread each) at the same
global batch, DW4 and LJ13 by default; prints s/step, samples/s and the scaling efficiency.

    python scripts/bench_scaling.py                       # 1 and 2 ranks, dw4 and lj13
    python scripts/bench_scaling.py --ranks 1 2 4 --configs configs/lj13.yaml --batch 512

Efficiency is t_1 / (K · t_K): 100 % means K ranks do the same work K times faster. Other jobs on
the machine lower it; run it on a quiet machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=[str(ROOT / "configs" / "dw4.yaml"), str(ROOT / "configs" / "lj13.yaml")])
    p.add_argument("--ranks", nargs="*", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=256, help="global batch (split over the ranks)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--samples", type=int, default=512, help="samples with log weights, split over the ranks")
    p.add_argument("--set", nargs="*", default=["target.reference=null"], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from eqflow.benchmark_scaling import scaling_table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.configs:
            for k in args.ranks:
                out = Path(tmp) / f"{Path(cfg).stem}_{k}.json"
                code = ("import sys; from eqflow.benchmark_scaling import measure_rank; "
                        f"measure_rank({cfg!r}, {str(out)!r}, {args.batch}, steps={args.steps}, "
                        f"n_sample={args.samples}, overrides={args.set!r})")
                script = Path(tmp) / "rank.py"
                script.write_text(code)
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}", str(script)]
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if r.returncode != 0:
                    sys.exit(f"error: {Path(cfg).stem} with {k} ranks failed:\n{r.stderr[-2000:]}")
                rows.append(json.loads(out.read_text()))
                print(f"... {Path(cfg).stem}, {k} rank(s): {rows[-1]['seconds_per_step']:.3f} s/step", file=sys.stderr)
    print(scaling_table(rows))


if __name__ == "__main__":
    main()
