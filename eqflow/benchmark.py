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

__all__ = ["DivergenceCase", "run_case", "run_isolated", "format_table", "time_log_prob"]


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
    exact_method: str = "loop"  # exact divergence: "loop" (one backward pass per coordinate) | "batched"
    exact_chunk_size: int | None = None  # batched: basis vectors per backward pass (None: default)
    exact_row_chunk: int | str | None = "auto"  # exact: rows per block of field + divergence (None: all)
    compile: bool = False  # torch.compile the field (the warm-up absorbs the compilation)
    field: str = "egnn"  # "egnn" (hidden, n_layers) | "pairwise" (PairwiseField, one hidden layer of width hidden)
    n_env: int = 0  # pairwise: environment channels (PairwiseField n_env)

    @property
    def mode(self) -> str:
        """Column label: ``exact-loop``, ``exact-batched``, ``hutchinson`` (``+compile``), or
        ``exact-closed`` for the pair field's closed-form divergence (``exact-closed-envK`` with K
        environment channels)."""
        if self.field == "pairwise":
            return "exact-closed" + (f"-env{self.n_env}" if self.n_env else "") + ("+compile" if self.compile else "")
        name = f"exact-{self.exact_method}" if self.divergence == "exact" else self.divergence
        return name + ("+compile" if self.compile else "")


def _peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024


def run_case(case: DivergenceCase) -> dict:
    """Build an EGNN (or pair-field) flow for ``case`` and time one solve (rk4, ``n_steps``) in this process."""
    from .distributions import CoMFreeGaussian
    from .flows import ContinuousFlow
    from .nn import EGNNField, PairwiseField

    torch.manual_seed(case.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(case.device)
    cuda = device.type == "cuda"
    if case.field == "pairwise":
        field = PairwiseField(dim=case.dim, hidden=case.hidden, n_layers=1, n_env=case.n_env).to(device)
    else:
        field = EGNNField(dim=case.dim, hidden=case.hidden, n_layers=case.n_layers).to(device)
    if case.compile:
        field = torch.compile(field, dynamic=False)
    kw = dict(divergence=case.divergence, exact_method=case.exact_method, exact_chunk_size=case.exact_chunk_size,
              exact_row_chunk=case.exact_row_chunk)
    flow = ContinuousFlow(field, CoMFreeGaussian(case.n_atoms, case.dim), solver="rk4", n_steps=case.n_steps,
                          adjoint=case.memory_mode == "adjoint", checkpoint=case.memory_mode == "checkpoint",
                          **kw).to(device)
    # Warm-up outside the measurement (allocator, lazy init, CUDA kernels of both passes, compilation):
    # the measured batch size, so a compiled field is not recompiled for a new shape.
    warm = ContinuousFlow(field, CoMFreeGaussian(case.n_atoms, case.dim), solver="euler", n_steps=1,
                          **kw).to(device)
    wb = case.micro_batch or case.batch if case.task == "revkl" else case.batch
    if case.task == "sample":
        with torch.no_grad():
            warm.sample(wb)
    else:
        x, log_q = warm.sample(wb)
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
    return dict(asdict(case), mode=case.mode, wall_s=wall, peak_gb=peak / 1e9, finite=ok)


def _label(case) -> dict:
    # Divergence cases carry a column label; other cases run through run_isolated (bench_fields) do not.
    mode = getattr(case, "mode", None)
    return {} if mode is None else {"mode": mode}


def _child(case, queue, runner=None):
    try:
        queue.put((runner or run_case)(case))
    except Exception as exc:  # reported in the table, not swallowed
        queue.put(dict(asdict(case), **_label(case), error=f"{type(exc).__name__}: {str(exc)[:200]}"))


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
        return dict(asdict(case), **_label(case), error=f"timeout after {timeout:.0f} s")
    if proc.exitcode != 0 and queue.empty():
        return dict(asdict(case), **_label(case),
                    error=f"process died (exit code {proc.exitcode}; out of memory?)")
    return queue.get()


def format_table(rows: list[dict]) -> str:
    """One text table: a row per system/batch/task, a time and a peak-memory column per mode, and the
    speedup of each other mode over ``exact-loop`` (the reference) where both ran."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    others = [m for m in modes if m != "exact-loop"] if "exact-loop" in modes else []
    head = f"{'system':>7} {'batch':>5} {'task':>6} {'steps':>5} {'memory':>10}"
    head += "".join(f" {m + ' s':>{max(9, len(m) + 2)}}" for m in modes)
    head += "".join(f" {'loop/' + m:>{max(8, len(m) + 5)}}" for m in others)
    head += "".join(f" {m + ' GB':>{max(9, len(m) + 3)}}" for m in modes)
    lines = [head, "-" * len(head)]
    keyed = {}
    for r in rows:
        key = (r["n_atoms"], r["dim"], r["batch"], r["task"], r["n_steps"])
        keyed.setdefault(key, {})[r["mode"]] = r

    def cell(r, k, fmt):
        if not r:
            return "-"
        return "err" if "error" in r else format(r[k], fmt)

    for (n, d, b, task, steps), by_mode in keyed.items():
        any_row = next(iter(by_mode.values()))
        memory = any_row.get("memory_mode", "") if task == "revkl" else "no graph"
        line = f"{f'{n}x{d}':>7} {b:>5} {task:>6} {steps:>5} {memory:>10}"
        line += "".join(f" {cell(by_mode.get(m), 'wall_s', '.2f'):>{max(9, len(m) + 2)}}" for m in modes)
        ref = by_mode.get("exact-loop")
        for m in others:
            r = by_mode.get(m)
            ok = ref and r and "error" not in ref and "error" not in r
            speed = f"{ref['wall_s'] / r['wall_s']:.1f}x" if ok else "-"
            line += f" {speed:>{max(8, len(m) + 5)}}"
        line += "".join(f" {cell(by_mode.get(m), 'peak_gb', '.2f'):>{max(9, len(m) + 3)}}" for m in modes)
        lines.append(line)
    for r in rows:
        if "error" in r:
            lines.append(f"  note: {r['n_atoms']}x{r['dim']} b{r['batch']} {r['task']} {r['mode']}: {r['error']}")
    return "\n".join(lines)


def time_log_prob(flow, n: int, batch_size: int, divergence: str = "exact", seed: int = 0,
                  progress: bool = False) -> dict:
    """Wall time of ``log q`` for ``n`` CoM-free points (base samples) scored in batches without a graph.

    What an evaluation pays for its log-densities: the flow's own solver settings, one reverse solve
    per batch. Returns ``n``, ``wall_s``, ``per_sample_ms`` and the number of non-finite values.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    param = next(flow.parameters())
    x = torch.randn(n, flow.n_atoms, flow.dim, generator=gen, dtype=param.dtype)
    scale = getattr(flow.base, "scales", None)
    scale = getattr(flow.base, "scale", 1.0) if scale is None else scale
    x = (x - x.mean(1, keepdim=True)) * float(torch.as_tensor(scale).detach().flatten()[0])
    x = x.to(param.device)
    cuda = param.device.type == "cuda"
    with torch.no_grad():
        flow.log_prob(x[:2], divergence=divergence)  # warm-up (lazy init, kernels)
        if cuda:
            torch.cuda.synchronize(param.device)
        t0 = time.perf_counter()
        out = []
        for i in range(0, n, batch_size):
            out.append(flow.log_prob(x[i:i + batch_size], divergence=divergence))
            if progress:
                print(f"  {min(i + batch_size, n)}/{n} points, {time.perf_counter() - t0:.1f} s", flush=True)
        lq = torch.cat(out)
        if cuda:
            torch.cuda.synchronize(param.device)
        wall = time.perf_counter() - t0
    return dict(n=n, wall_s=wall, per_sample_ms=1e3 * wall / n, n_nonfinite=int((~torch.isfinite(lq)).sum()))
