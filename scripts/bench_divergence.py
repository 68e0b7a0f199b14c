#!/usr/bin/env python
"""Exact (looped or batched) vs Hutchinson divergence: wall time and peak memory of flow solves.

For each system (atoms x dim) and batch: one sampling solve with log-density (no graph kept) and
one reverse-KL-style forward + backward pass, with rk4 and an EGNN field, each case in its own
process. Modes: ``exact-loop`` (one backward pass per coordinate, the reference), ``exact-batched``
(``--chunk-size`` coordinates per vmapped backward pass), ``hutchinson``; append ``+compile`` to a
mode to ``torch.compile`` the field. ``exact-closed`` swaps the EGNN for the pair field
(eqflow.nn.PairwiseField, one hidden layer of --hidden) whose exact divergence is closed form: a
different model, shown for its cost. Example:

    python scripts/bench_divergence.py                       # the full table (slow on CPU)
    python scripts/bench_divergence.py --systems 22x3 --batches 256 --steps 1 --tasks sample
    python scripts/bench_divergence.py --modes exact-loop exact-loop+compile --tasks sample
    python scripts/bench_divergence.py --systems 22x3 55x3 --batches 256 --modes exact-batched exact-closed
"""
import argparse

from eqflow.benchmark import DivergenceCase, format_table, run_isolated


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=["4x2", "13x3", "22x3", "55x3"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--tasks", nargs="+", default=["sample", "revkl"], choices=["sample", "revkl"])
    p.add_argument("--modes", nargs="+", default=["exact-loop", "exact-batched", "hutchinson"],
                   help="exact-loop | exact-batched | hutchinson | exact-closed (pair field), each optionally with +compile")
    p.add_argument("--row-chunk", default="auto",
                   help="exact: rows per block of field + divergence: auto (32 on CPU, all on GPU), none, or N")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="exact-batched: coordinates per backward pass (default: from a memory budget)")
    p.add_argument("--steps", type=int, default=20, help="rk4 steps per solve")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--n-env", type=int, default=0, help="exact-closed: the pair field's environment channels")
    p.add_argument("--memory-mode", default="adjoint", choices=["adjoint", "checkpoint", "none"])
    p.add_argument("--exact-micro-batch", type=int, default=16,
                   help="exact reverse-KL accumulates gradients over chunks of this size (its graph holds "
                        "one backward pass per coordinate)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is reported as such")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GB is then peak GPU memory allocated)")
    args = p.parse_args()
    row_chunk = None if args.row_chunk == "none" else (args.row_chunk if args.row_chunk == "auto" else int(args.row_chunk))
    rows = []
    for system in args.systems:
        n, d = (int(v) for v in system.lower().split("x"))
        for batch in args.batches:
            for task in args.tasks:
                for mode in args.modes:
                    name, _, extra = mode.partition("+")
                    if (name not in ("exact-loop", "exact-batched", "hutchinson", "exact-closed")
                            or extra not in ("", "compile")):
                        p.error(f"unknown mode {mode!r}")
                    closed = name == "exact-closed"
                    div = "hutchinson" if name == "hutchinson" else "exact"
                    micro = args.exact_micro_batch if (div == "exact" and task == "revkl" and not closed) else None
                    case = DivergenceCase(n, d, batch, div, task, args.steps, args.hidden, args.layers,
                                          args.memory_mode, micro, device=args.device,
                                          exact_method="loop" if closed else (name.partition("-")[2] or "loop"),
                                          exact_chunk_size=args.chunk_size, exact_row_chunk=row_chunk,
                                          compile=extra == "compile", field="pairwise" if closed else "egnn",
                                          n_env=args.n_env if closed else 0)
                    r = run_isolated(case, args.timeout)
                    rows.append(r)
                    status = r.get("error") or f"{r['wall_s']:.2f} s, {r['peak_gb']:.2f} GB"
                    print(f"[{system} b{batch} {task} {mode}] {status}", flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
