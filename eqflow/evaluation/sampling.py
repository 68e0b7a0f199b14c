"""Weighted samples of a generator: drawn in chunks, per rank under torchrun, written as shard files
and one merged file.

A *sample set* is a dict of CPU tensors ``x [n, N, dim]``, ``log_q [n]``, ``u [n]`` (raw reduced
energies) and ``log_w [n] = -u - log_q`` and, for chiral molecules, the folding statistics of
:func:`fold_samples` (``d_fraction``, ``stereo_mismatch_fraction``, ``folded``): what
``scripts/sample.py`` writes (:func:`save_samples`, :func:`load_samples`) and what
:func:`~eqflow.evaluation.report.evaluate_generator` scores. Mirror images are already folded and
``log 2`` already added in a set: do not fold it again.

Seeds (:func:`shard_seed`): in one process the stream is ``torch.manual_seed(seed)`` followed by
``gen.sample`` batch after batch, so ``sample.py --seed s`` and ``evaluate.py --seed s`` draw the same
samples. Under torchrun with ``W`` ranks, rank ``r`` draws ``shard_sizes(n, W)[r]`` samples from its
own stream, seeded by ``(seed, W, r)``: reproducible for a given number of ranks, and different from
the single-process stream. (Before distributed sampling, ``sample.py``/``evaluate.py`` seeded before
building the model, whose initialization consumed random numbers; they now seed just before
drawing, so the samples of a given seed changed once.)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dd
from ..data_io import atomic_savez
from ..errors import EqflowError

__all__ = ["energies_in_batches", "fold_samples", "shard_seed", "draw_samples", "merge_sample_sets",
           "gather_samples", "save_samples", "load_samples", "shard_path", "sample_to_file", "merge_shards",
           "PER_SAMPLE_KEYS"]

PER_SAMPLE_KEYS = ("x", "log_q", "u", "log_w")
_FRACTIONS = ("d_fraction", "stereo_mismatch_fraction")  # fold statistics: fractions of the samples


def energies_in_batches(target, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Raw reduced energies ``[n]`` of ``x`` ``[n, N, dim]`` without autograd."""
    with torch.no_grad():
        parts = [target.energy(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else x.new_zeros(0)


def is_molecule(target) -> bool:
    return getattr(target, "dihedrals", None) is not None and getattr(target, "topology", None) is not None


def fold_samples(gen, x: torch.Tensor, log_q: torch.Tensor | None):
    """Samples of ``gen`` as evaluation sees them: for a chiral molecule and a reflection-symmetric
    model, mirror images folded onto the target's own enantiomer with ``log q + log 2``; otherwise
    unchanged. Returns ``(x, log_q, stats)`` with ``d_fraction`` (before folding),
    ``stereo_mismatch_fraction`` and ``folded`` (empty stats for targets without chiral centres)."""
    centers = getattr(gen.target, "chiral_centers", None) or []
    if not is_molecule(gen.target) or not centers:
        return x, log_q, {}
    from .chirality import fold_to_reference, l_sign
    signs = getattr(gen.target, "chiral_signs", None) or [l_sign(None, c, nb) for c, nb in centers]
    x_f, log_q_f, stats = fold_to_reference(x, log_q, centers, signs)
    stats["folded"] = bool(gen.reflection_symmetric)
    if stats["folded"]:
        return x_f, log_q_f, stats
    return x, log_q, stats


def shard_seed(seed: int, rank: int = 0, world: int = 1) -> int:
    """The torch seed of rank ``rank`` of ``world`` drawing samples for run seed ``seed``: ``seed``
    itself in one process, else an independent 63-bit stream per ``(seed, world, rank)``."""
    if world == 1:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(world), int(rank)]).generate_state(2, np.uint64)[0] >> 1)


def _combine_stats(sizes, stats_list) -> dict:
    """Fold statistics of several sets (``sizes[i]`` samples with ``stats_list[i]``) as one set's."""
    out = {}
    total = sum(sizes)
    for key in _FRACTIONS:
        if any(key in s for s in stats_list):  # fractions -> counts (exact) -> fraction of the whole
            count = sum(round(float(s.get(key, 0.0)) * k) for s, k in zip(stats_list, sizes))
            out[key] = count / total if total else 0.0
    folded = [bool(s["folded"]) for s in stats_list if "folded" in s]
    if folded:
        out["folded"] = any(folded)
    return out


def draw_samples(gen, n: int, divergence: str | None = None, chunk_size: int | None = None,
                 progress: bool = False) -> dict:
    """``n`` weighted samples of ``gen`` (a sample set, see the module) from the current torch RNG.

    Works in chunks of ``chunk_size`` samples (rounded up to whole ``gen.batch_size`` batches, so the
    random stream, and the samples, do not depend on it; default 16 batches): each chunk is drawn
    without autograd graphs (exact divergence uses autograd inside the solve only), moved to the
    CPU, folded (:func:`fold_samples`) and scored (raw energies) before the next, into arrays
    allocated once. ``divergence`` defaults to the generator's evaluation divergence.
    """
    from tqdm.auto import tqdm
    bs = gen.batch_size
    chunk = bs * max(1, math.ceil((chunk_size or 16 * bs) / bs))
    out, sizes, stats = {}, [], []
    with tqdm(total=n, disable=not progress, desc="sample", unit="sample") as bar:
        for start in range(0, max(n, 1), chunk):
            k = min(chunk, n - start)
            x, log_q = gen.sample(k, divergence=divergence)
            x, log_q, st = fold_samples(gen, x.cpu(), log_q.cpu())
            u = energies_in_batches(gen.target, x, bs)
            part = {"x": x, "log_q": log_q, "u": u, "log_w": -u - log_q}
            if not out:
                out = {key: v.new_empty((n, *v.shape[1:])) for key, v in part.items()}
            for key, v in part.items():
                out[key][start:start + k] = v
            sizes.append(k)
            stats.append(st)
            bar.update(k)
    out.update(_combine_stats(sizes, stats))
    return out


def merge_sample_sets(parts: list[dict]) -> dict:
    """Sample sets concatenated in order, with their fold statistics combined and ``shard_sizes``
    (the samples of each part) added."""
    sizes = [len(p["x"]) for p in parts]
    out = {k: torch.cat([torch.as_tensor(p[k]) for p in parts]) for k in PER_SAMPLE_KEYS}
    out.update(_combine_stats(sizes, parts))
    out["shard_sizes"] = torch.tensor(sizes)
    return out


def gather_samples(samples: dict) -> dict:
    """Every rank's sample set, merged in rank order (:func:`merge_sample_sets`), on every rank.

    Call it on every rank of an initialized process group; in one process it returns ``samples``.
    """
    info = dd.dist_info()
    if not info.enabled:
        return samples
    n = len(samples["x"])
    stats = torch.tensor([[float(n)] + [float(samples.get(k, 0.0)) for k in _FRACTIONS]
                          + [float(bool(samples.get("folded", False)))]], dtype=torch.float64)
    rows = dd.all_gather_cat(stats).tolist()
    sizes = [int(r[0]) for r in rows]
    keys = [k for k in (*_FRACTIONS, "folded") if k in samples]
    per_rank = [{k: (bool(r[3]) if k == "folded" else r[1 + _FRACTIONS.index(k)]) for k in keys} for r in rows]
    out = {k: dd.all_gather_cat(samples[k]) for k in PER_SAMPLE_KEYS}
    out.update(_combine_stats(sizes, per_rank))
    out["shard_sizes"] = torch.tensor(sizes)
    return out


def save_samples(samples: dict, path) -> Path:
    """Write a sample set as ``.npz`` atomically (numbers as 0-d arrays); returns the path."""
    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in samples.items()}
    return atomic_savez(path, **arrays)


def load_samples(path) -> dict:
    """A sample set from a file of :func:`save_samples` (``scripts/sample.py``): tensors, and Python
    numbers for the statistics. Raises :class:`~eqflow.errors.EqflowError` if keys are missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples file not found: {path}")
    with np.load(path) as data:
        missing = [k for k in PER_SAMPLE_KEYS if k not in data.files]
        if missing:
            raise EqflowError(f"{path} is not a samples file of scripts/sample.py: no {', '.join(missing)}")
        out = {}
        for k in data.files:
            v = data[k]
            out[k] = torch.from_numpy(v) if v.ndim else v.item()
    return out


def shard_path(out, rank: int, world: int) -> Path:
    """``<dir>/<stem>.rank<R>-of-<W>.npz`` beside the merged file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world}.npz")


def sample_to_file(gen, n: int, out, seed: int = 0, divergence: str | None = None, keep_shards: bool = False,
                   chunk_size: int | None = None, progress: bool = False, log=print) -> dict | None:
    """Draw ``n`` weighted samples into the ``.npz`` file ``out`` (:func:`draw_samples`, seeds as in
    the module docstring); returns the sample set on rank 0 and None on the other ranks.

    In one process ``out`` is written directly. Under torchrun (the process group already joined,
    :func:`eqflow.distributed.init_distributed`) rank ``r`` draws its share into
    :func:`shard_path` ``(out, r, W)``; after a barrier rank 0 merges the shards in rank order into
    ``out`` (with ``shard_sizes``) and removes them unless ``keep_shards``. Every rank must see the
    folder of ``out`` (one file system). Files are written atomically; rank 0 alone calls ``log``,
    one line per file it leaves behind.
    """
    info = dd.dist_info()
    out = Path(out)
    torch.manual_seed(shard_seed(seed, info.rank, info.world_size))
    mine = draw_samples(gen, dd.shard_sizes(n, info.world_size)[info.rank], divergence=divergence,
                        chunk_size=chunk_size, progress=progress and info.is_main)
    if not info.enabled:
        save_samples(mine, out)
        log(f"wrote {n} samples to {out}")
        return mine
    save_samples(mine, shard_path(out, info.rank, info.world_size))
    del mine
    dd.barrier()
    return merge_shards(out, info.world_size, keep_shards, log) if info.is_main else None


def merge_shards(out, world: int, keep_shards: bool = False, log=print) -> dict:
    """Rank 0's part of :func:`sample_to_file`: merge the ``world`` shard files of ``out`` in rank
    order into ``out`` (atomically), remove them unless ``keep_shards``; returns the merged set."""
    out = Path(out)
    shards = [shard_path(out, r, world) for r in range(world)]
    merged = merge_sample_sets([load_samples(p) for p in shards])
    save_samples(merged, out)
    for p, k in zip(shards, merged["shard_sizes"].tolist()):
        if keep_shards:
            log(f"wrote {k} samples to {p}")
        else:
            p.unlink()
    log(f"wrote {len(merged['x'])} samples to {out} (merged from {world} ranks)")
    return merged
