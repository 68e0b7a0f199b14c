"""Data parallelism with ``torch.distributed``, launched by ``torchrun`` (one node or several).

``torchrun --nproc_per_node=K scripts/train_eq.py --config ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` reads them and joins the
process group (gloo on CPU, nccl when the ranks use CUDA devices). Without those variables every
function here is the single-process identity, so library code calls them unconditionally.

Conventions (DESIGN.md): the global batch is split evenly over the ranks; every rank holds the same
parameters (same initial seed, gradients averaged every step); rank ``r`` draws its own samples
(seeded by ``seed``, ``r`` and the step, see :func:`step_seed`); metrics are reduced over ranks
before logging; rank 0 alone writes files; a checkpoint does not depend on the number of ranks.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "dist_info", "is_main", "world_size", "rank", "barrier",
           "all_reduce_gradients", "all_reduce_mean", "all_reduce_sum", "all_gather_cat", "step_seed",
           "shard_sizes", "close_distributed", "process_group", "rank_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "cpu", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group torchrun set up (no-op in a single process). Returns :class:`DistInfo`.

    ``device`` decides the backend: ``cuda`` -> nccl (each rank on ``cuda:LOCAL_RANK``), else gloo.
    """
    if not dist.is_available() or not _launched():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist_info()


def dist_info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    dist.get_backend())


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str = "cpu", timeout_s: float = 600.0):
    """``with process_group(device) as info:`` joins the process group (:func:`init_distributed`) and
    leaves it on exit, also on errors: the body of a script run by torchrun or alone."""
    info = init_distributed(device, timeout_s)
    try:
        yield info
    finally:
        close_distributed()


def rank_device(device: str, info: DistInfo | None = None) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``cuda`` under torchrun (one GPU per rank),
    else ``device`` unchanged."""
    info = info or dist_info()
    if info.enabled and str(device).startswith("cuda"):
        return f"cuda:{info.local_rank}"
    return device


def world_size() -> int:
    return dist_info().world_size


def rank() -> int:
    return dist_info().rank


def is_main() -> bool:
    return dist_info().is_main


def barrier() -> None:
    if dist_info().enabled:
        dist.barrier()


def wait_for_path(path, timeout_s: float = 7200.0, poll_s: float = 1.0, what: str = "file") -> Path:
    """Wait until ``path`` exists (rank 0 writes it) and return it.

    Not a collective on purpose: what rank 0 makes (an MCMC reference for LJ55 takes longer than a
    process group's timeout) may outlast a barrier. If rank 0 fails instead, torchrun stops the
    waiting ranks; a single process never waits. Raises ``TimeoutError`` naming the file.
    """
    path = Path(path)
    deadline = time.monotonic() + float(timeout_s)
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()}: waited {timeout_s:.0f} s for rank 0 to write the {what} {path}")
        time.sleep(poll_s)
    return path


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for (run seed, rank, step): independent streams per rank and step, and a
    resumed run (any number of ranks) draws what an uninterrupted one with as many ranks draws."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(2, np.uint64)[0] >> 1)


def shard_sizes(n: int, world: int) -> list[int]:
    """``n`` items split over ``world`` ranks as evenly as possible (the first ranks take one more)."""
    return [n // world + (r < n % world) for r in range(world)]


def all_reduce_gradients(params) -> None:
    """Average the gradients of ``params`` over ranks in one collective (a flat buffer).

    Why not ``DistributedDataParallel``: a continuous flow evaluates its field many times per
    backward pass (every solver stage, and again inside the adjoint's backward solve), while DDP's
    reducer assumes one forward per backward. One all-reduce of the finished gradients is exact and
    as cheap as DDP's bucketed all-reduce for models of this size.
    """
    info = dist_info()
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:  # parameters unused on this rank still take part in the average
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def _reduce(values: dict, op) -> dict:
    info = dist_info()
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    device = "cuda" if info.backend == "nccl" else "cpu"
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return dict(zip(keys, t.cpu().tolist()))


def all_reduce_mean(values: dict) -> dict:
    """Mean over ranks of each float in ``values`` (the same dict on every rank)."""
    out = _reduce(values, dist.ReduceOp.SUM if dist.is_available() else None)
    n = world_size()
    return {k: v / n for k, v in out.items()} if n > 1 else out


def all_reduce_sum(values: dict) -> dict:
    """Sum over ranks of each number in ``values``."""
    return _reduce(values, dist.ReduceOp.SUM if dist.is_available() else None)


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[n_r, ...]`` from every rank in rank order (sizes may differ)."""
    info = dist_info()
    if not info.enabled:
        return x
    device = "cuda" if info.backend == "nccl" else "cpu"
    xd = x.to(device)
    n = torch.tensor([xd.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    big = max(sizes)
    pad = torch.zeros((big - xd.shape[0], *xd.shape[1:]), dtype=xd.dtype, device=device)
    parts = [torch.zeros((big, *xd.shape[1:]), dtype=xd.dtype, device=device) for _ in range(info.world_size)]
    dist.all_gather(parts, torch.cat([xd, pad]))
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)
