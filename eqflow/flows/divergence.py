"""Divergence of a vector field: exact (vector-Jacobian products, looped or batched) or Hutchinson."""
from __future__ import annotations

import torch

__all__ = ["exact_divergence", "exact_divergence_looped", "exact_divergence_batched",
           "hutchinson_divergence", "sample_noise", "default_chunk_size", "NOISE_TYPES", "EXACT_METHODS"]

NOISE_TYPES = ("rademacher", "gaussian")
EXACT_METHODS = ("auto", "loop", "batched")

# Rows (basis vectors x batch) of one batched backward pass. A batched pass holds about
# chunk_size times the intermediate tensors of one backward pass, so the product chunk_size·B is
# what bounds memory: 4096 rows is ~16 basis vectors at B = 256 (EGNN 22x3, hidden 32: ~0.3 GB).
DEFAULT_ROWS = 4096


def default_chunk_size(batch: int, n_coords: int, rows: int = DEFAULT_ROWS) -> int:
    """Basis vectors per batched backward pass: ``rows // batch``, clamped to ``[1, n_coords]``."""
    return max(1, min(n_coords, rows // max(batch, 1)))


def exact_divergence(v: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                     frobenius: bool = False, method: str = "auto", chunk_size: int | None = None):
    """``tr(∂v/∂x)`` for ``v, x`` of shape ``[B, N, dim]`` (``v`` computed from ``x``): ``[B]``.

    ``N·dim`` vector-Jacobian products (rows of the Jacobian), batched over ``B``. For a
    translation-invariant, mean-free field this ambient trace equals the divergence on the CoM-free
    subspace. With ``frobenius=True`` also returns ``‖∂v/∂x‖²_F`` ``[B]`` from the same rows.

    Parameters
    ----------
    create_graph : keep the graph of the result (training through the exact divergence)
    method : ``"loop"`` (one backward pass per coordinate, the reference), ``"batched"``
        (``chunk_size`` basis vectors per backward pass, vmapped by autograd) or ``"auto"``:
        batched on accelerators, where one small backward pass per coordinate leaves the device idle,
        and with ``create_graph`` (training), where the loop builds ``N·dim`` separate graphs; the loop
        on CPU without a graph, where it measured faster (batched backward passes cost the same
        arithmetic and vmap's batching rules copy more; see ``scripts/bench_divergence.py``)
    chunk_size : basis vectors per batched pass (default :func:`default_chunk_size`)
    """
    if method not in EXACT_METHODS:
        raise ValueError(f"unknown exact-divergence method {method!r}; choose one of {EXACT_METHODS}")
    if method == "auto":
        method = "loop" if v.device.type == "cpu" and not create_graph else "batched"
    if method == "loop":
        return exact_divergence_looped(v, x, create_graph, frobenius)
    return exact_divergence_batched(v, x, create_graph, frobenius, chunk_size)


def exact_divergence_looped(v: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                            frobenius: bool = False):
    """Reference :func:`exact_divergence`: one backward pass per coordinate in a Python loop."""
    vf = v.flatten(1)
    d = vf.shape[1]
    div = torch.zeros(vf.shape[0], dtype=v.dtype, device=v.device)
    fro = torch.zeros_like(div)
    for i in range(d):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
        g = g.flatten(1)
        div = div + g[:, i]
        if frobenius:
            fro = fro + g.pow(2).sum(-1)
    return (div, fro) if frobenius else div


def exact_divergence_batched(v: torch.Tensor, x: torch.Tensor, create_graph: bool = False,
                             frobenius: bool = False, chunk_size: int | None = None):
    """:func:`exact_divergence` with ``chunk_size`` Jacobian rows per backward pass.

    Each pass feeds a stack of one-hot cotangents ``[C, B, N, dim]`` to ``torch.autograd.grad``
    with ``is_grads_batched=True`` (autograd vmaps its backward over the stack); a last, smaller
    chunk covers ``N·dim`` not divisible by ``C``. The field's ops need vmap batching rules for
    their backward (EGNNField and E3NNField have them).
    """
    b = v.shape[0]
    d = v[0].numel()
    c = int(chunk_size) if chunk_size is not None else default_chunk_size(b, d)
    if c < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    eye = torch.eye(d, dtype=v.dtype, device=v.device)
    div = torch.zeros(b, dtype=v.dtype, device=v.device)
    fro = torch.zeros_like(div)
    for start in range(0, d, c):
        e = eye[start:start + c]  # [C, d]
        cot = e[:, None, :].expand(-1, b, -1).reshape((e.shape[0],) + v.shape)
        (g,) = torch.autograd.grad(v, x, cot, retain_graph=True, create_graph=create_graph,
                                   is_grads_batched=True)
        g = g.flatten(2)  # [C, B, d]: rows start.. of each sample's Jacobian
        div = div + g[:, :, start:start + c].diagonal(dim1=0, dim2=2).sum(-1)
        if frobenius:
            fro = fro + g.pow(2).sum((0, 2))
    return (div, fro) if frobenius else div


def hutchinson_divergence(v: torch.Tensor, x: torch.Tensor, noise: torch.Tensor,
                          create_graph: bool = False, frobenius: bool = False):
    """Unbiased estimate ``εᵀ (∂v/∂x) ε`` of the divergence with ``E[εεᵀ] = I``: ``[B]``.

    One vector-Jacobian product. ``noise`` has the shape of ``x``; keep it fixed during one ODE solve
    so the estimated log-density is the exact log-density of one fixed (random) estimator. With
    ``frobenius=True`` also returns ``|εᵀ ∂v/∂x|²`` ``[B]``, an unbiased estimate of ``‖∂v/∂x‖²_F``
    from the same product.
    """
    (g,) = torch.autograd.grad(v, x, noise, create_graph=create_graph)
    div = (g * noise).flatten(1).sum(-1)
    return (div, g.pow(2).flatten(1).sum(-1)) if frobenius else div


def sample_noise(shape, kind: str = "rademacher", dtype=None, device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise with zero mean and identity covariance: Rademacher (±1) or standard Gaussian."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    raise ValueError(f"unknown Hutchinson noise {kind!r}; choose one of {NOISE_TYPES}")
