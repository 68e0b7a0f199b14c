"""Wall time and peak memory of flow solves, each case in a fresh process.

Peak memory is the growth of the process's resident-set high-water mark (``ru_maxrss``) during the
measured call, so every case runs in its own spawned process: one case's allocations cannot hide
another's. On a CUDA device it is the peak of allocated GPU memory (``torch.cuda.max_memory_allocated``)
and timings wait for the device (``torch.cuda.synchronize``).
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

__all__ = ["DivergenceCase", "run_case", "run_isolated", "format_table"]


@dataclass
class DivergenceCase:
    n_atoms: int
    dim: int
    batch: int
    divergence: str  # "exact" | "hutchinson"
    task: str  # "sample" (solve with log-density, no graph) | "revkl" (forward + backward)
    n_steps: int = 20
    hidden: int = 32
    n_layers: int = 3
    memory_mode: str = "adjoint"  # for revkl: "adjoint" | "checkpoint" | "none"
    micro_batch: int | None = None  # revkl: accumulate gradients over chunks of this size
    seed: int = 0
    device: str = "cpu"


def _peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024


def run_case(case: DivergenceCase) -> dict:
    """Build an EGNN flow for ``case`` and time one solve (rk4, ``n_steps``) in this process."""
    from .distributions import CoMFreeGaussian
    from .flows import ContinuousFlow
    from .nn import EGNNField

    torch.manual_seed(case.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(case.device)
    cuda = device.type == "cuda"
    field = EGNNField(dim=case.dim, hidden=case.hidden, n_layers=case.n_layers).to(device)
    flow = ContinuousFlow(field, CoMFreeGaussian(case.n_atoms, case.dim), divergence=case.divergence,
                          solver="rk4", n_steps=case.n_steps, adjoint=case.memory_mode == "adjoint",
                          checkpoint=case.memory_mode == "checkpoint").to(device)
    # Warm-up outside the measurement (allocator, lazy init, CUDA kernels of both passes).
    warm = ContinuousFlow(field, CoMFreeGaussian(case.n_atoms, case.dim), divergence=case.divergence,
                          solver="euler", n_steps=1).to(device)
    x, log_q = warm.sample(2)
    (log_q.sum() + x.sum()).backward()
    field.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_bytes()
    t0 = time.perf_counter()
    if case.task == "sample":
        with torch.no_grad():
            x, log_q = flow.sample(case.batch)
        ok = bool(torch.isfinite(log_q).all())
    elif case.task == "revkl":
        chunk = case.micro_batch or case.batch
        for start in range(0, case.batch, chunk):
            b = min(chunk, case.batch - start)
            x, log_q = flow.sample(b)
            # A stand-in for the reduced energy: the gradient path through x is what costs.
            loss = (log_q + 0.5 * x.pow(2).sum((1, 2))).sum() / case.batch
            loss.backward()
        ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in field.parameters())
    else:
        raise ValueError(f"unknown task {case.task!r}; choose 'sample' or 'revkl'")
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if cuda else max(0, _peak_rss_bytes() - rss0)
    return dict(asdict(case), wall_s=wall, peak_gb=peak / 1e9, finite=ok)


def _child(case, queue, runner=None):
    try:
        queue.put((runner or run_case)(case))
    except Exception as exc:  # reported in the table, not swallowed
        queue.put(dict(asdict(case), error=f"{type(exc).__name__}: {exc}"))


def run_isolated(case, timeout: float | None = None, runner=None) -> dict:
    """``runner(case)`` (default :func:`run_case`) in a spawned process (clean memory high-water
    mark); kills it at ``timeout``. ``runner`` must be a module-level function (it is pickled)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(case, queue, runner), daemon=True)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return dict(asdict(case), error=f"timeout after {timeout:.0f} s")
    if proc.exitcode != 0 and queue.empty():
        return dict(asdict(case), error=f"process died (exit code {proc.exitcode}; out of memory?)")
    return queue.get()


def format_table(rows: list[dict]) -> str:
    """One text table; ratio columns compare exact against Hutchinson for the same system/batch/task."""
    head = (f"{'system':>7} {'batch':>5} {'task':>6} {'steps':>5} {'mode':>10} "
            f"{'exact s':>9} {'hutch s':>9} {'speedup':>8} {'exact GB':>9} {'hutch GB':>9}")
    lines = [head, "-" * len(head)]
    keyed = {}
    for r in rows:
        key = (r["n_atoms"], r["dim"], r["batch"], r["task"], r["n_steps"])
        keyed.setdefault(key, {})[r["divergence"]] = r
    for (n, d, b, task, steps), pair in keyed.items():
        e, h = pair.get("exact", {}), pair.get("hutchinson", {})
        mode = (e or h).get("memory_mode", "") if task == "revkl" else "no graph"

        def cell(r, k, fmt):
            if not r:
                return "-"
            return "err" if "error" in r else format(r[k], fmt)

        speed = (f"{e['wall_s'] / h['wall_s']:.1f}x" if e and h and "error" not in e and "error" not in h
                 else "-")
        lines.append(f"{n}x{d:<5} {b:>5} {task:>6} {steps:>5} {mode:>10} {cell(e, 'wall_s', '9.2f'):>9} "
                     f"{cell(h, 'wall_s', '9.2f'):>9} {speed:>8} {cell(e, 'peak_gb', '9.2f'):>9} "
                     f"{cell(h, 'peak_gb', '9.2f'):>9}")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"  note: {r['n_atoms']}x{r['dim']} b{r['batch']} {r['task']} {r['divergence']}: {r['error']}")
    return "\n".join(lines)
