"""Config -> target, vector field and flow. The one place where the pieces are wired together."""
from __future__ import annotations

import torch

from .config import Config
from .distributions import MixtureBase
from .flows import ContinuousFlow, MixtureFlow
from .nn import E3NNField, EGNNField, ScaledField
from .targets import Energy, make_target

__all__ = ["build_target", "build_field", "build_flow", "node_features_of"]


def build_target(cfg: Config) -> Energy:
    """The target named in ``cfg.target`` (see :data:`eqflow.targets.TARGETS`)."""
    return make_target(cfg.target.name, **cfg.target.kwargs)


def node_features_of(target: Energy) -> torch.Tensor | None:
    """One-hot atom types ``[N, n_types]`` for molecules; None for identical particles."""
    types = getattr(target, "atom_types", None)
    if types is None:
        return None
    types = torch.as_tensor(types, dtype=torch.long)
    n_types = int(getattr(target, "n_atom_types", int(types.max()) + 1))
    return torch.nn.functional.one_hot(types, n_types).to(torch.get_default_dtype())


def build_field(cfg: Config, dim: int, n_node_features: int) -> torch.nn.Module:
    f = cfg.field
    if f.kind == "egnn":
        field = EGNNField(dim=dim, n_node_features=n_node_features, hidden=f.hidden, n_layers=f.n_layers,
                          n_frequencies=f.n_frequencies, coord_gain=f.coord_gain,
                          coord_aggregation=f.coord_aggregation)
    else:
        field = E3NNField(dim=dim, n_node_features=n_node_features, n_scalars=f.n_scalars,
                          hidden_irreps=f.hidden_irreps, n_layers=f.n_layers, lmax=f.lmax, n_basis=f.n_basis,
                          r_max=f.r_max, radial_hidden=f.radial_hidden, n_frequencies=f.n_frequencies,
                          edge_channels=f.edge_channels, edges=f.edges, avg_num_neighbors=f.avg_num_neighbors,
                          backend=f.e3nn_backend)
    return field if f.length_scale == 1.0 else ScaledField(field, f.length_scale)


def build_flow(cfg: Config, target: Energy) -> ContinuousFlow:
    """A :class:`MixtureFlow` (``flow.n_components`` components, 1 = plain flow) for ``target``."""
    fl = cfg.flow
    h = node_features_of(target)
    n_feat = 0 if h is None else h.shape[1]
    base = MixtureBase(target.n_atoms, target.dim, fl.n_components, fl.base_scale,
                       learn_weights=fl.learn_base and fl.n_components > 1, learn_scales=fl.learn_base)
    field = build_field(cfg, target.dim, n_feat + fl.n_components)
    return MixtureFlow(field, base, node_features=h, divergence=fl.divergence, noise=fl.noise,
                       solver=fl.solver, n_steps=fl.n_steps, rtol=fl.rtol, atol=fl.atol, adjoint=fl.adjoint,
                       checkpoint=fl.checkpoint)
