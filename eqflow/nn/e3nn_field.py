"""E(3)-equivariant tensor-product vector field built from e3nn irreps."""
from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from ..geometry import remove_mean
from .embedding import TimeEmbedding, check_field_inputs, node_inputs

__all__ = ["E3NNField", "E3NNConvLayer"]


def _scatter_to_receivers(msg: torch.Tensor, dst: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """Sum edge messages ``[B, E, C]`` onto their receiving nodes: ``[B, N, C]``."""
    out = msg.new_zeros(msg.shape[0], n_atoms, msg.shape[-1])
    return out.index_add_(1, dst, msg)


class E3NNConvLayer(nn.Module):
    """Point convolution with a gated nonlinearity (irreps in -> irreps out).

    ``m_ij = TP(f_j, Y(x_ij); W(radial(|x_ij|)))``, ``f_i' = Gate(Σ_j m_ij / √(N-1) + Linear(f_i))``,
    with a residual connection where the irreps agree. ``Y`` are spherical harmonics and the tensor
    product weights come from an MLP of a radial basis, so the layer is O(3)-equivariant.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_hidden, n_basis: int, radial_hidden: int):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        irreps_sh, irreps_hidden = o3.Irreps(irreps_sh), o3.Irreps(irreps_hidden)
        reachable = o3.FullTensorProduct(self.irreps_in, irreps_sh).irreps_out.simplify()
        ok = {ir for _, ir in reachable}
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0 and ir in ok])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0 and ir in ok])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, [torch.nn.functional.silu] * len(scalars),
                         gates, [torch.sigmoid] * len(gates), gated)
        self.tp = o3.FullyConnectedTensorProduct(self.irreps_in, irreps_sh, self.gate.irreps_in,
                                                 shared_weights=False)
        self.radial = FullyConnectedNet([n_basis, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.self_interaction = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out

    def forward(self, f, sh, basis, src, dst):
        n = f.shape[1]
        msg = self.tp(f[:, src], sh, self.radial(basis))
        agg = _scatter_to_receivers(msg, dst, n) / max(n - 1, 1) ** 0.5
        out = self.gate(agg + self.self_interaction(f))
        return out + f if self.irreps_out == self.irreps_in else out


class E3NNField(nn.Module):
    """Tensor-product vector field ``v(t, x, h)`` with one ``1o`` vector per atom (3D only).

    Parameters
    ----------
    dim : must be 3 (spherical harmonics are three-dimensional)
    n_node_features : F, width of the invariant node features ``h``
    n_scalars : width of the scalar node embedding (``n_scalars x 0e``)
    hidden_irreps : irreps of the hidden node features, e.g. ``"16x0e + 8x1o + 4x2e"``
    n_layers : number of gated convolutions
    lmax : highest degree of the edge spherical harmonics
    n_basis, r_max : Gaussian radial basis on ``[0, r_max]`` (length units of ``x``)
    radial_hidden : width of the MLP mapping the radial basis to tensor-product weights
    n_frequencies : time embedding size

    Call ``field(t [B], x [B, N, 3], h [B, N, F] or None) -> v [B, N, 3]`` (mean-free, translation
    invariant, O(3)-equivariant). Edges are all ordered pairs ``i != j``, batched as ``[B, E]``.
    """

    def __init__(self, dim: int = 3, n_node_features: int = 0, n_scalars: int = 16,
                 hidden_irreps: str = "16x0e + 8x1o + 4x2e", n_layers: int = 3, lmax: int = 2,
                 n_basis: int = 10, r_max: float = 5.0, radial_hidden: int = 32, n_frequencies: int = 4):
        super().__init__()
        if dim != 3:
            raise ValueError(f"E3NNField is 3D only (e3nn spherical harmonics), got dim={dim}; "
                             "use EGNNField for 2D systems such as DW4")
        self.dim, self.n_node_features = 3, int(n_node_features)
        self.n_basis, self.r_max = int(n_basis), float(r_max)
        self.time_embedding = TimeEmbedding(n_frequencies)
        self.embed = nn.Linear(self.time_embedding.out_features + self.n_node_features, n_scalars)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        irreps = o3.Irreps(f"{n_scalars}x0e")
        layers = []
        for _ in range(n_layers):
            layer = E3NNConvLayer(irreps, self.irreps_sh, hidden_irreps, n_basis, radial_hidden)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.out_tp = o3.FullyConnectedTensorProduct(irreps, self.irreps_sh, "1x1o", shared_weights=False)
        self.out_radial = FullyConnectedNet([n_basis, radial_hidden, self.out_tp.weight_numel],
                                            torch.nn.functional.silu)
        with torch.no_grad():  # near-identity flow at initialization
            list(self.out_radial.children())[-1].weight.mul_(1e-2)
        self._edges: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _edge_index(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if n not in self._edges or self._edges[n][0].device != torch.device(device):
            idx = torch.arange(n, device=device)
            src, dst = torch.meshgrid(idx, idx, indexing="ij")
            keep = src != dst
            self._edges[n] = (src[keep], dst[keep])
        return self._edges[n]

    def forward(self, t: torch.Tensor, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        t = check_field_inputs(t, x, self.dim)
        n = x.shape[1]
        src, dst = self._edge_index(n, x.device)
        vec = x[:, dst] - x[:, src]  # [B, E, 3], points from sender to receiver
        length = torch.sqrt(vec.pow(2).sum(-1) + 1e-12)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        basis = soft_one_hot_linspace(length, 0.0, self.r_max, self.n_basis, basis="gaussian",
                                      cutoff=False) * self.n_basis ** 0.5
        f = self.embed(node_inputs(self.time_embedding(t), h, n, self.n_node_features))
        for layer in self.layers:
            f = layer(f, sh, basis, src, dst)
        msg = self.out_tp(f[:, src], sh, self.out_radial(basis))
        v = _scatter_to_receivers(msg, dst, n) / max(n - 1, 1) ** 0.5
        return remove_mean(v)
