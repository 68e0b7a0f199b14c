"""Data-parallel scaling: seconds per training step and samples per second for 1..K ranks at the same
global batch (``scripts/bench_scaling.py``).

:func:`measure_rank` runs inside every rank of a ``torchrun`` job: it builds the config's flow, times
``steps`` training steps of the global batch (split over the ranks, gradients averaged) after
``warmup`` steps, then times drawing ``n_sample`` samples with log-densities (each rank its share, the
log weights gathered to rank 0). Rank 0 writes the numbers as JSON. :func:`scaling_table` turns the
runs for several world sizes into one table with the scaling efficiency ``t_1 / (K · t_K)``.
"""
from __future__ import annotations

import json
import math
import time

import torch

from . import distributed as dd

__all__ = ["measure_rank", "scaling_table"]


def measure_rank(config_path: str, out_path: str, batch_size: int, steps: int = 5, warmup: int = 2,
                 n_sample: int = 512, overrides: list[str] | None = None) -> dict | None:
    from .builders import build_flow, build_target
    from .config import apply_overrides, load_config
    from .training import Trainer

    torch.set_num_threads(1)
    info = dd.init_distributed("cpu")
    cfg = apply_overrides(load_config(config_path),
                          [f"train.batch_size={batch_size}", "train.lr_schedule=constant", *(overrides or [])])
    torch.manual_seed(cfg.train.seed)
    target = build_target(cfg)
    flow = build_flow(cfg, target)
    tr = Trainer(flow, target, cfg.train, out_dir=f"{out_path}.run", progress=False)
    for _ in range(warmup):
        tr.train_step()
    dd.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    dd.barrier()
    step_s = (time.perf_counter() - t0) / steps
    n_local = dd.shard_sizes(n_sample, info.world_size)[info.rank]
    dd.barrier()
    t0 = time.perf_counter()
    with torch.no_grad():
        x, log_q = flow.sample(n_local, divergence=cfg.eval.divergence if cfg.eval.divergence != "auto" else "exact")
        log_w = -target.energy(x) - log_q
    log_w = dd.all_gather_cat(log_w)
    sample_s = time.perf_counter() - t0
    result = {"world": info.world_size, "system": cfg.target.name, "batch": batch_size,
              "seconds_per_step": step_s, "samples_per_second": n_sample / sample_s,
              "n_gathered": int(log_w.shape[0])}
    if info.is_main:
        with open(out_path, "w") as fh:
            json.dump(result, fh)
    dd.close_distributed()
    return result if info.is_main else None


def scaling_table(rows: list[dict]) -> str:
    """Rows of :func:`measure_rank` (several world sizes per system) as a table with efficiencies."""
    base = {r["system"]: r for r in rows if r["world"] == 1}
    head = (f"{'system':>8} {'batch':>6} {'ranks':>5} {'s/step':>8} {'step eff':>9} {'samples/s':>10} "
            f"{'sample eff':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = base.get(r["system"])
        eff_step = b["seconds_per_step"] / (r["world"] * r["seconds_per_step"]) if b else math.nan
        eff_sample = r["samples_per_second"] / (r["world"] * b["samples_per_second"]) if b else math.nan
        lines.append(f"{r['system']:>8} {r['batch']:>6} {r['world']:>5} {r['seconds_per_step']:>8.3f} "
                     f"{eff_step:>9.0%} {r['samples_per_second']:>10.1f} {eff_sample:>10.0%}")
    return "\n".join(lines)
