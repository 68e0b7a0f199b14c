"""E(3)-equivariant vector field from tensor-product convolutions (:class:`E3NNConv`), 3D only."""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from ..geometry import remove_mean
from .cueq import BACKENDS
from .e3nn_conv import E3NNConv
from .edges import EDGE_MODES, dense_edges, radius_edges
from .embedding import TimeEmbedding, check_field_inputs, node_inputs
from .radial import RadialEmbedding

__all__ = ["E3NNField"]


class E3NNField(nn.Module):
    """Tensor-product vector field ``v(t, x, h)`` with one ``1o`` vector per atom (3D only).

    Time and node features are embedded as ``n_scalars`` invariant channels, ``n_layers``
    :class:`E3NNConv` interactions (depthwise products with edge spherical harmonics up to ``lmax``,
    weights from a radial MLP of a Bessel basis with a smooth cutoff at ``r_max``) turn them into
    ``hidden_irreps`` features, and a linear map reads out one vector per atom.

    Parameters
    ----------
    dim : must be 3 (spherical harmonics are three-dimensional)
    n_node_features : F, width of the invariant node features ``h``
    n_scalars : width of the scalar node embedding (``n_scalars x 0e``)
    hidden_irreps : irreps of the hidden node features, e.g. ``"32x0e + 8x1o"``
    n_layers : number of interactions
    lmax : highest degree of the edge spherical harmonics
    n_basis : number of Bessel functions of the radial basis
    r_max : cutoff radius (length units of ``x``): pairs farther apart do not interact
    radial_hidden : width of the MLP mapping the radial basis to tensor-product weights
    n_frequencies : time embedding size
    edge_channels : channels per irrep in the edge tensor products (see :class:`E3NNConv`); None:
        the full hidden width
    edges : ``"dense"``: all pairs of a structure (small systems); ``"radius"``: only pairs closer
        than ``r_max`` (larger systems). Both give the same field (the envelope is exactly zero
        beyond ``r_max``); ``radius`` computes fewer messages
    avg_num_neighbors : messages are summed and divided by ``√avg_num_neighbors``; None: ``N - 1``
    backend : ``"e3nn"`` or ``"cueq"`` (cuequivariance-torch, optional extra) for the edge products

    Call ``field(t [B], x [B, N, 3], h [B, N, F] or None) -> v [B, N, 3]`` (mean-free, translation
    invariant, O(3)- and permutation-equivariant).

    The defaults (21k parameters with 4 node features) are sized so that forward + Hutchinson
    divergence + backward costs about 2-3x ``EGNNField(hidden=32, n_layers=3)`` on one CPU thread
    (``scripts/bench_fields.py``); ``edge_channels`` and ``lmax`` set most of the cost.
    """

    def __init__(self, dim: int = 3, n_node_features: int = 0, n_scalars: int = 32,
                 hidden_irreps: str = "64x0e + 16x1o", n_layers: int = 3, lmax: int = 2,
                 n_basis: int = 8, r_max: float = 5.0, radial_hidden: int = 16, n_frequencies: int = 4,
                 edge_channels: int | None = 8, edges: str = "dense", avg_num_neighbors: float | None = None,
                 backend: str = "e3nn"):
        super().__init__()
        if dim != 3:
            raise ValueError(f"E3NNField is 3D only (e3nn spherical harmonics), got dim={dim}; "
                             "use EGNNField for 2D systems such as DW4")
        if edges not in EDGE_MODES:
            raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.dim, self.n_node_features = 3, int(n_node_features)
        self.r_max, self.edges = float(r_max), edges
        self.avg_num_neighbors = avg_num_neighbors
        self.time_embedding = TimeEmbedding(n_frequencies)
        self.embed = nn.Linear(self.time_embedding.out_features + self.n_node_features, n_scalars)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial = RadialEmbedding(r_max, n_basis)
        irreps = o3.Irreps(f"{n_scalars}x0e")
        layers = []
        for _ in range(n_layers):
            layers.append(E3NNConv(irreps, hidden_irreps, self.irreps_sh, n_basis, radial_hidden, edge_channels,
                                   backend))
            irreps = layers[-1].irreps_out
        if o3.Irrep("1o") not in {ir for _, ir in irreps}:
            raise ValueError(f"hidden_irreps={hidden_irreps!r} has no 1o channels to read the velocity from")
        self.layers = nn.ModuleList(layers)
        self.readout = o3.Linear(irreps, "1x1o")
        with torch.no_grad():  # near-identity flow at initialization
            self.readout.weight.mul_(1e-2)
        self._dense: dict = {}

    def _edge_index(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        if self.edges == "radius":
            return radius_edges(x, self.r_max)
        key = (b, n, x.device)
        if key not in self._dense:
            if len(self._dense) > 8:  # batch sizes vary (evaluation chunks): keep the cache small
                self._dense.clear()
            self._dense[key] = dense_edges(b, n, x.device)
        return self._dense[key]

    def forward(self, t: torch.Tensor, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        t = check_field_inputs(t, x, self.dim)
        b, n, _ = x.shape
        src, dst = self._edge_index(x)
        xf = x.reshape(b * n, 3)
        vec = xf[dst] - xf[src]  # [E, 3], from sender to receiver
        length = torch.sqrt(vec.pow(2).sum(-1) + 1e-12)  # finite gradient at coincident atoms
        sh = self.spherical_harmonics(vec)
        radial = self.radial(length)
        norm = self.avg_num_neighbors if self.avg_num_neighbors is not None else max(n - 1, 1)
        f = self.embed(node_inputs(self.time_embedding(t), h, n, self.n_node_features)).reshape(b * n, -1)
        for layer in self.layers:
            # Dense edges are receiver-sorted with N-1 per node: the layers sum them without a scatter.
            f = layer(f, sh, radial, src, None if self.edges == "dense" else dst, norm)
        return remove_mean(self.readout(f).reshape(b, n, 3))
