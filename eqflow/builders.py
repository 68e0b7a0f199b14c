"""Config -> target, vector field and flow. The one place where the pieces are wired together."""
from __future__ import annotations

import torch

from .config import Config, ConfigError
from .distributions import MixtureBase
from .distributions.harmonic import HarmonicBase
from .flows import ContinuousFlow, MixtureFlow
from .nn import E3NNField, EGNNField, PairwiseField, ScaledField
from .nn.pairwise import bond_hop_features
from .targets import Energy, make_target

__all__ = ["build_target", "build_field", "build_flow", "build_base", "build_model", "build_ic_flow",
           "node_features_of"]


def build_target(cfg: Config) -> Energy:
    """The target named in ``cfg.target`` (see :data:`eqflow.targets.TARGETS`).

    An unknown name or arguments the target does not take raise :class:`ConfigError` (one line).
    """
    from .targets import TARGETS
    name = cfg.target.name
    if str(name).lower() not in TARGETS:
        raise ConfigError(f"config key 'target.name': unknown target {name!r}; known targets: "
                          f"{', '.join(sorted(TARGETS))}")
    try:
        return make_target(name, **cfg.target.kwargs)
    except TypeError as err:  # an unexpected or missing keyword of the factory
        raise ConfigError(f"config key 'target.kwargs': bad arguments for target {name!r}: {err}") from None
    except (ValueError, FileNotFoundError) as err:  # e.g. a bad solvent, temperature or PDB path
        raise ConfigError(f"target {name!r}: {err}") from None


def node_features_of(target: Energy) -> torch.Tensor | None:
    """One-hot atom types ``[N, n_types]`` for molecules; None for identical particles."""
    types = getattr(target, "atom_types", None)
    if types is None:
        return None
    types = torch.as_tensor(types, dtype=torch.long)
    n_types = int(getattr(target, "n_atom_types", int(types.max()) + 1))
    return torch.nn.functional.one_hot(types, n_types).to(torch.get_default_dtype())


def build_field(cfg: Config, dim: int, n_node_features: int, target: Energy | None = None) -> torch.nn.Module:
    """The vector field of ``cfg.field`` (``target``: for a molecule's bond graph, pairwise fields)."""
    f = cfg.field
    if f.kind == "egnn":
        field = EGNNField(dim=dim, n_node_features=n_node_features, hidden=f.hidden, n_layers=f.n_layers,
                          n_frequencies=f.n_frequencies, coord_gain=f.coord_gain,
                          coord_aggregation=f.coord_aggregation)
    elif f.kind == "pairwise":
        topology = getattr(target, "topology", None)
        pair_features = None
        if f.bond_hops > 0 and topology is not None:
            pair_features = bond_hop_features(topology.n_atoms, [(a.index, b.index) for a, b in topology.bonds],
                                              f.bond_hops)
        field = PairwiseField(dim=dim, n_node_features=n_node_features, hidden=f.hidden, n_layers=f.n_layers,
                              n_frequencies=f.n_frequencies, n_basis=f.n_basis, r_max=f.r_max,
                              pair_features=pair_features, gain=f.coord_gain, aggregation=f.coord_aggregation,
                              n_env=f.n_env)
    else:
        field = E3NNField(dim=dim, n_node_features=n_node_features, n_scalars=f.n_scalars,
                          hidden_irreps=f.hidden_irreps, n_layers=f.n_layers, lmax=f.lmax, n_basis=f.n_basis,
                          r_max=f.r_max, radial_hidden=f.radial_hidden, n_frequencies=f.n_frequencies,
                          edge_channels=f.edge_channels, edges=f.edges, avg_num_neighbors=f.avg_num_neighbors,
                          backend=f.e3nn_backend)
    return field if f.length_scale == 1.0 else ScaledField(field, f.length_scale)


def build_base(cfg: Config, target: Energy) -> MixtureBase:
    """The :class:`MixtureBase` of ``flow.n_components`` components for ``target``.

    ``flow.base: gaussian``: isotropic CoM-free Gaussians of scale ``flow.base_scale``.
    ``flow.base: harmonic``: :class:`HarmonicBase` components on the target's bond graph
    (``Λ = harmonic_k·L + harmonic_eps·I``), each with global scale ``flow.base_scale`` (1: ``Λ``
    as given); needs a target with a topology (molecules), otherwise a :class:`ConfigError`.
    """
    fl = cfg.flow
    learn_weights = fl.learn_base and fl.n_components > 1
    if fl.base == "gaussian":
        return MixtureBase(target.n_atoms, target.dim, fl.n_components, fl.base_scale,
                           learn_weights=learn_weights, learn_scales=fl.learn_base)
    topology = getattr(target, "topology", None)
    if topology is None:
        raise ConfigError(f"config key 'flow.base': harmonic needs a target with bonds (a molecule); "
                          f"target {cfg.target.name!r} has no topology")
    scales = fl.base_scale if isinstance(fl.base_scale, list) else [fl.base_scale] * fl.n_components
    try:
        comps = [HarmonicBase.from_topology(topology, target.dim, k=fl.harmonic_k, eps=fl.harmonic_eps,
                                            scale=float(s), learn_scale=fl.learn_base) for s in scales]
    except ValueError as err:  # e.g. a disconnected bond graph with harmonic_eps = 0
        raise ConfigError(f"config key 'flow.base': {err}") from None
    return MixtureBase(target.n_atoms, target.dim, fl.n_components, learn_weights=learn_weights, components=comps)


def build_flow(cfg: Config, target: Energy) -> ContinuousFlow:
    """A :class:`MixtureFlow` (``flow.n_components`` components, 1 = plain flow) for ``target``."""
    fl = cfg.flow
    h = node_features_of(target)
    n_feat = 0 if h is None else h.shape[1]
    base = build_base(cfg, target)
    field = build_field(cfg, target.dim, n_feat + fl.n_components, target)
    return MixtureFlow(field, base, node_features=h, divergence=fl.divergence, noise=fl.noise,
                       solver=fl.solver, n_steps=fl.n_steps, rtol=fl.rtol, atol=fl.atol, adjoint=fl.adjoint,
                       checkpoint=fl.checkpoint)


def build_ic_flow(cfg: Config, target: Energy) -> torch.nn.Module:
    """The internal-coordinate baseline (:class:`~eqflow.internal.ICFlow`) for a molecular target.

    Everything comes from the config and the target's own structure (Z-matrix from its topology,
    boxes around its PDB bonds and angles, the chirality of its chiral centres held fixed), so the
    same model is rebuilt from a checkpoint's config.
    """
    from .internal import ICFlow, ZMatrix
    topology, positions = getattr(target, "topology", None), getattr(target, "positions", None)
    if topology is None or positions is None:
        raise ConfigError(f"model.kind 'ic' needs a molecular target (topology and structure), "
                          f"not {cfg.target.name!r}")
    m = cfg.model
    zm = ZMatrix.from_topology(topology)
    flow = ICFlow.from_data(zm, torch.as_tensor(positions)[None], n_std=0.0, bond_rel_width=m.ic_bond_width,
                            angle_width=m.ic_angle_width, fix_chirality=True, n_layers=m.ic_layers,
                            bins=m.ic_bins, hidden=(m.ic_hidden, m.ic_hidden), seed=cfg.train.seed)
    return flow.to(torch.get_default_dtype())


def build_model(cfg: Config, target: Energy) -> torch.nn.Module:
    """The model of ``cfg.model.kind``: eqflow's E(3) flow (:func:`build_flow`) or the IC baseline."""
    if cfg.model.kind == "ic":
        return build_ic_flow(cfg, target)
    return build_flow(cfg, target)
