"""Equivariant point convolution (NequIP / MACE interaction) on an edge list, built from e3nn irreps."""
from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from .cueq import BACKENDS, make_channelwise_tp

__all__ = ["E3NNConv", "channelwise_paths"]


def _natural_first(ir: o3.Irrep) -> tuple[int, bool]:
    # The output order of cuequivariance's channelwise product (0e, 0o, 1o, 1e, 2e, 2o, ...): by
    # degree, natural parity (-1)^l first. Using it for e3nn too makes the two backends' outputs and
    # weights line up element by element.
    return ir.l, ir.p != (-1) ** ir.l


def channelwise_paths(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, targets) -> tuple[o3.Irreps, list]:
    """Output irreps and ``"uvu"`` instructions of ``irreps_in ⊗ irreps_sh`` kept where ``ir_out`` is in ``targets``.

    Every input channel ``u`` meets every spherical harmonic and keeps its own output channel
    (depthwise: ``mul_out = mul_in``); outputs are sorted by irrep (see ``_natural_first``), one
    segment per path, so the weight of path ``k`` is the ``k``-th block of the per-edge weights.
    """
    targets = {o3.Irrep(ir) for ir in targets}
    paths = []
    for i1, (mul, ir1) in enumerate(irreps_in):
        for i2, (_, ir2) in enumerate(irreps_sh):
            for ir_out in ir1 * ir2:
                if ir_out in targets:
                    paths.append((i1, i2, mul, ir_out))
    order = sorted(range(len(paths)), key=lambda k: _natural_first(paths[k][3]))  # stable
    paths = [paths[k] for k in order]
    irreps_mid = o3.Irreps([(mul, ir) for _, _, mul, ir in paths])
    instructions = [(i1, i2, k, "uvu", True) for k, (i1, i2, _, _) in enumerate(paths)]
    return irreps_mid, instructions


class E3NNConv(nn.Module):
    """One interaction: depthwise tensor-product convolution, channel mixing, gate, self-interaction.

    For node features ``f`` (``irreps_in``), edge spherical harmonics ``Y(r̂_ij)`` and radial
    features ``R(|r_ij|)`` (smooth, zero at the cutoff):

        m_i  = 1/√n̄ · Σ_{j→i} TP_uvu( (W_up f)_j, Y(r̂_ij); MLP(R(|r_ij|)) )     (on edges)
        f_i' = Gate( W_mix m_i + W_self f_i )  (+ f_i where irreps_in == irreps_out)

    ``TP_uvu`` keeps each input channel separate (``weight_numel`` = number of channel paths, not the
    ``mul_in · mul_out`` of a fully connected product), its per-edge weights come from a radial
    MLP without biases (so they vanish with the envelope at the cutoff), ``W_*`` are ``o3.Linear``
    maps on nodes. The gate applies SiLU to scalars and multiplies each ``l > 0`` channel by the
    sigmoid of its own extra scalar. The layer is O(3)-equivariant and permutation equivariant.

    Parameters
    ----------
    irreps_in : irreps of the input node features, e.g. ``"32x0e"`` or ``"32x0e + 8x1o"``
    irreps_hidden : requested output irreps; kept are those the tensor product can reach
        (``irreps_out`` is the result, scalars first)
    irreps_sh : irreps of the edge spherical harmonics, e.g. ``o3.Irreps.spherical_harmonics(2)``
    n_basis : width of the radial features ``R``
    radial_hidden : width of the hidden layer of the radial MLP
    edge_channels : channels per irrep entering the edge product (``W_up`` maps ``irreps_in`` to
        ``edge_channels x`` each of its irreps); None: ``irreps_in`` itself. Edges outnumber nodes
        ``N - 1`` to one, so this sets the cost; the node-side maps keep the full width
    backend : ``"e3nn"`` or ``"cueq"`` (cuequivariance-torch, optional; same numbers, faster on GPUs)

    Call ``conv(f [M, irreps_in.dim], sh [E, irreps_sh.dim], radial [E, n_basis], src [E], dst [E],
    avg_num_neighbors) -> [M, irreps_out.dim]`` with nodes flattened over structures and ``src``,
    ``dst`` flat node indices (messages flow ``src -> dst``; ``dst=None``: edges sorted by receiver,
    the same number per node, as :func:`eqflow.nn.dense_edges` makes them).
    """

    def __init__(self, irreps_in, irreps_hidden, irreps_sh, n_basis: int, radial_hidden: int = 32,
                 edge_channels: int | None = None, backend: str = "e3nn"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.irreps_in: o3.Irreps = o3.Irreps(irreps_in)
        self.irreps_sh: o3.Irreps = o3.Irreps(irreps_sh)
        irreps_hidden = o3.Irreps(irreps_hidden).simplify()
        reachable = {ir for _, ir in o3.FullTensorProduct(self.irreps_in, self.irreps_sh).irreps_out}
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0 and ir in reachable])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0 and ir in reachable])
        if scalars.dim == 0:
            raise ValueError(f"irreps_hidden={irreps_hidden} has no scalars reachable from {self.irreps_in}")
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        act = {1: nn.functional.silu, -1: torch.tanh}  # odd scalars need an odd activation
        self.gate = Gate(scalars, [act[ir.p] for _, ir in scalars], gates, [torch.sigmoid] * len(gates), gated)
        self.irreps_out: o3.Irreps = self.gate.irreps_out
        # Only the irreps the gate consumes are computed on edges.
        # The edge product is the cost: it runs on `edge_channels` copies of each input irrep.
        self.irreps_edge: o3.Irreps = (self.irreps_in if edge_channels is None else
                                       o3.Irreps([(edge_channels, ir) for _, ir in self.irreps_in]))
        self.irreps_mid, instructions = channelwise_paths(self.irreps_edge, self.irreps_sh,
                                                          {ir for _, ir in self.gate.irreps_in})
        self.backend = backend
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_edge)
        self.tp = make_channelwise_tp(self.irreps_edge, self.irreps_sh, self.irreps_mid, instructions, backend)
        self.radial = FullyConnectedNet([n_basis, radial_hidden, self.tp.weight_numel], nn.functional.silu)
        self.linear_mix = o3.Linear(self.irreps_mid, self.gate.irreps_in)
        self.self_interaction = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.residual = self.irreps_out == self.irreps_in

    def forward(self, f: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor, avg_num_neighbors: float) -> torch.Tensor:
        weights = self.radial(radial)
        m = self.tp(self.linear_up(f), sh, weights, src, dst, f.shape[0])  # gather, product, scatter-sum
        out = self.gate(self.linear_mix(m / avg_num_neighbors ** 0.5) + self.self_interaction(f))
        return out + f if self.residual else out
