#!/usr/bin/env python
"""Exact vs Hutchinson divergence: wall time and peak memory of flow solves (one table).

For each system (atoms x dim) and batch: one sampling solve with log-density (no graph kept) and
one reverse-KL-style forward + backward pass, with rk4 and an EGNN field, each case in its own
process. Example:

    python scripts/bench_divergence.py                       # the full table (slow on CPU)
    python scripts/bench_divergence.py --systems 22x3 --batches 256 --steps 20
"""
import argparse

from eqflow.benchmark import DivergenceCase, format_table, run_isolated


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=["4x2", "13x3", "22x3", "55x3"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--tasks", nargs="+", default=["sample", "revkl"], choices=["sample", "revkl"])
    p.add_argument("--divergences", nargs="+", default=["exact", "hutchinson"])
    p.add_argument("--steps", type=int, default=20, help="rk4 steps per solve")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--memory-mode", default="adjoint", choices=["adjoint", "checkpoint", "none"])
    p.add_argument("--exact-micro-batch", type=int, default=16,
                   help="exact reverse-KL accumulates gradients over chunks of this size (its graph holds "
                        "one backward pass per coordinate)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is reported as such")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GB is then peak GPU memory allocated)")
    args = p.parse_args()
    rows = []
    for system in args.systems:
        n, d = (int(v) for v in system.lower().split("x"))
        for batch in args.batches:
            for task in args.tasks:
                for div in args.divergences:
                    micro = args.exact_micro_batch if (div == "exact" and task == "revkl") else None
                    case = DivergenceCase(n, d, batch, div, task, args.steps, args.hidden, args.layers,
                                          args.memory_mode, micro, device=args.device)
                    r = run_isolated(case, args.timeout)
                    rows.append(r)
                    status = r.get("error") or f"{r['wall_s']:.2f} s, {r['peak_gb']:.2f} GB"
                    print(f"[{system} b{batch} {task} {div}] {status}", flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
