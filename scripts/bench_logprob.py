#!/usr/bin/env python
"""Time the evaluation's log-densities: ``log q`` of N points by an untrained flow built from a config.

The flow, solver and batch size are the config's evaluation settings (``eval.solver``/``eval.n_steps``,
falling back to the flow's; ``eval.batch_size``); the points are CoM-free base samples. Example:

    python scripts/bench_logprob.py --config configs/ala2_implicit.yaml --n 1000 --divergence exact
    python scripts/bench_logprob.py --config configs/ala2_implicit.yaml --n 10000 --device cuda
"""
import argparse

import torch

from eqflow.benchmark import time_log_prob
from eqflow.builders import build_flow, build_target
from eqflow.config import apply_overrides, load_config


class _Shape:
    """What build_flow reads from a molecular target, from its PDB alone (no OpenMM needed)."""

    def __init__(self, pdb):
        names = [line[12:16].strip() for line in open(pdb) if line.startswith(("ATOM", "HETATM"))]
        index = {nm: i for i, nm in enumerate(dict.fromkeys(names))}
        self.n_atoms, self.dim = len(names), 3
        self.atom_types = torch.tensor([index[nm] for nm in names])
        self.n_atom_types = len(index)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--n", type=int, default=1000, help="points to score")
    p.add_argument("--divergence", default="exact", choices=["exact", "hutchinson"])
    p.add_argument("--exact-method", default="auto", choices=["auto", "loop", "batched"])
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pdb", default=None, help="build the flow from this PDB's atoms instead of the target "
                                                 "(no OpenMM needed; atom types by name)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides section.key=value")
    args = p.parse_args()
    cfg = apply_overrides(load_config(args.config), args.set)
    target = _Shape(args.pdb) if args.pdb else build_target(cfg)
    torch.manual_seed(cfg.train.seed)
    flow = build_flow(cfg, target).to(args.device)
    ev = cfg.eval
    flow.solver, flow.n_steps = ev.solver or cfg.flow.solver, ev.n_steps or cfg.flow.n_steps
    flow.exact_method, flow.exact_chunk_size = args.exact_method, args.chunk_size
    flow.eval()
    bs = args.batch_size or ev.batch_size
    print(f"{args.config}: {flow.n_atoms} atoms, {flow.solver}-{flow.n_steps}, {args.divergence} divergence "
          f"({args.exact_method}), batch {bs}, {args.device}, {torch.get_num_threads()} thread(s)", flush=True)
    r = time_log_prob(flow, args.n, bs, args.divergence, progress=True)
    print(f"log q of {r['n']} points: {r['wall_s']:.1f} s ({r['per_sample_ms']:.2f} ms per point; "
          f"{r['n_nonfinite']} non-finite); 10,000 points: ~{r['per_sample_ms'] * 10:.0f} s", flush=True)
    if hasattr(target, "close"):
        target.close()


if __name__ == "__main__":
    main()
