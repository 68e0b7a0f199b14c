"""YAML configuration -> typed dataclasses. Unknown keys and wrong types are rejected by name.

A config file has the sections ``target``, ``model``, ``field``, ``flow``, ``train``, ``eval`` and,
for the data-free mass-covering objectives, ``fm``, ``buffer`` and ``anneal``; every key is
optional and defaults to the values below. ``--set train.lr=3e-4`` style overrides go through
:func:`apply_overrides` with the same checks.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import EqflowError
from .solvers import SOLVERS, SolverSettings

__all__ = ["Config", "TargetConfig", "ModelConfig", "FieldConfig", "FlowConfig", "TrainConfig", "EvalConfig",
           "FMConfig", "BufferConfig", "AnnealConfig", "ConfigError", "load_config", "train_solver", "eval_solver",
           "config_from_dict", "config_to_dict", "apply_overrides"]


class ConfigError(EqflowError, ValueError):
    """A config problem; the message names the offending key."""


@dataclass
class TargetConfig:
    name: str = "dw4"                       # registry name: dw4 | lj13 | lj55 | ala2_vacuum | ala2_implicit
    kwargs: dict = dc_field(default_factory=dict)  # passed to the target factory (temperature, n_workers, ...)
    reference: Optional[str] = "auto"       # reference samples: a path, "auto" (particle MCMC cache) or null
    reference_cache: str = "data_cache"     # where "auto" references are generated and cached
    energy_cut: float = 1000.0              # training energies above this (kT) grow only logarithmically
    force_clip: Optional[float] = None      # reverse KL: cap each atom's energy gradient at this norm (kT per
                                            # length unit) instead of the log damping's gradient, which lets
                                            # an expanding model win (null: off; README "Energy damping")


@dataclass
class FieldConfig:
    kind: str = "egnn"            # egnn | e3nn | pairwise (pair radial field, exact divergence in closed form)
    hidden: int = 64              # EGNN width (pairwise: width of the pair MLP)
    n_layers: int = 4             # EGNN / e3nn layers (pairwise: hidden layers of the pair MLP)
    n_frequencies: int = 4        # time embedding
    coord_gain: float = 1.0       # EGNN coordinate-update scale (pairwise: bound on each atom's speed)
    coord_aggregation: str = "mean"  # EGNN: mean or sum of the pair terms of the coordinate update
    n_scalars: int = 32           # e3nn: scalar embedding width (time and node features)
    hidden_irreps: str = "64x0e + 16x1o"  # e3nn hidden irreps (must include 1o: the velocity is read from it)
    lmax: int = 2                 # e3nn edge spherical harmonics degree
    n_basis: int = 8              # e3nn Bessel / pairwise Gaussian radial basis size
    r_max: float = 5.0            # e3nn cutoff: pairs farther apart do not interact (units of length_scale);
                                  # pairwise: extent of the radial basis (no cutoff: all pairs interact)
    radial_hidden: int = 16       # e3nn radial MLP width (edge-wise: cost grows with it)
    edge_channels: Optional[int] = 8  # e3nn channels per irrep in the edge tensor products (null: full width)
    edges: str = "dense"          # e3nn edge list: dense (all pairs) | radius (pairs within r_max; same field)
    avg_num_neighbors: Optional[float] = None  # e3nn message sum divided by its square root (null: n_atoms - 1)
    e3nn_backend: str = "e3nn"    # e3nn | cueq (cuequivariance-torch, pip install 'eqflow[cueq]')
    length_scale: float = 1.0     # the field sees x / length_scale (molecules in nm: 0.1)
    n_env: int = 0                # pairwise: environment channels per atom (each atom's smoothed radial
                                  # distribution; one many-body step, divergence still in closed form; 0: off)
    bond_hops: int = 3            # pairwise, molecules: bond-graph distance 1..bond_hops (and farther) as
                                  # pair features (0: off)


@dataclass
class FlowConfig:
    solver: str = "rk4"           # euler | midpoint | rk4 (fixed step) | dopri5 (adaptive)
    n_steps: int = 20
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "hutchinson"  # training divergence: hutchinson | exact
    noise: str = "rademacher"     # rademacher | gaussian
    adjoint: bool = False         # adjoint backpropagation (memory independent of n_steps)
    checkpoint: bool = False      # recompute each field evaluation in backward (exact gradients)
    n_components: int = 1         # mixture base components (1 = plain flow)
    base_scale: Union[float, list] = 1.0  # sigma of the base (one per component allowed)
    learn_base: bool = True       # learn mixture weights and scales
    base: str = "gaussian"        # gaussian | harmonic (bond-graph Gaussian; molecules only)
    harmonic_k: float = 100.0     # harmonic base: spring constant per bond (1/length²; alanine in nm: ~100)
    harmonic_eps: float = 10.0    # harmonic base: isotropic precision (1/length²), keeps the whole molecule bounded


@dataclass
class TrainConfig:
    steps: int = 1000             # optimizer steps
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "cosine"   # constant | cosine | exponential
    lr_final: float = 1e-5        # cosine floor / exponential end value
    warmup_steps: int = 0
    schedule_clock: str = "steps"  # steps | time: lr schedule and annealing rungs follow max(step/steps, seconds/budget)
    weight_decay: float = 0.0
    kl_weight: float = 1.0        # reverse KL (energy only, data-free)
    kl_gradient: str = "total"    # total | path: reverse-KL gradient; path drops the zero-mean score term
                                  # (zero variance at q = p; one extra reverse solve per step)
    kl_alpha: float = 1.0         # Rényi order of the energy loss: 1 = reverse KL; < 1 weights each sample's
                                  # gradient by w^(1-α) (self-normalized): mass-covering, same cost per step
    kl_alpha_from: float = 0.0    # share of training (steps, or the budget with schedule_clock: time) from which
                                  # kl_alpha applies; reverse KL before (the weights degenerate while q is far from p)
    ml_weight: float = 0.0        # maximum likelihood on reference samples
    ml_batch_size: int = 256      # also the batch of importance-weighted maximum likelihood (iwml_weight)
    fm_weight: float = 0.0        # importance-weighted flow matching on the replay buffer (data-free)
    iwml_weight: float = 0.0      # importance-weighted maximum likelihood on the replay buffer (through the solver)
    fm_data_weight: float = 0.0   # flow matching on the reference samples (data-based, no solver)
    kinetic_weight: float = 0.0   # λ_K of ∫|v|² dt along sampling paths (RNODE; keeps few-step solves accurate)
    jacobian_weight: float = 0.0  # λ_J of ∫‖∂v/∂x‖²_F dt (Hutchinson estimate in training)
    grad_clip: float = 10.0       # max global gradient norm
    solve_check_every: int = 0    # every this many steps, log solve_gap: |Δ log q| of the training solve at twice
                                  # its steps, same base points and probe (0: off); exploitation shows here first
    solve_check_samples: int = 64  # samples of that check
    solve_check_warn: float = 0.1  # warn once when solve_gap (mean, nats) exceeds this
    solve_check_refine: bool = False  # also double the training solve's steps when it does (up to the cap below),
                                      # so training cannot go on exploiting it; saved in checkpoints
    solve_check_max_steps: int = 64   # cap of those refinements (fixed-step solvers)
    ema_decay: float = 0.0        # exponential moving average of the weights (0: off; 0.99: ~last 100 steps);
                                  # checkpoints, evaluation and export use the average
    skip_warning_fraction: float = 0.05  # warn once when more than this fraction of steps was skipped (non-finite)
    budget_minutes: Optional[float] = None  # training time cap (minutes): no step starts that would end past it
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"        # float32 | float64


@dataclass
class EvalConfig:
    n_samples: int = 10000        # samples for ESS and energy/structure metrics
    batch_size: int = 1000
    divergence: str = "exact"     # evaluation log-densities: exact | hutchinson | auto (exact on a GPU,
                                  # and on CPU up to 40 coordinates; see generator.AUTO_EXACT_CPU_COORDS)
    solver: Optional[str] = None  # evaluation solver; null: the training solver. Importance weights need
    n_steps: Optional[int] = None  # a converged solve: null here means flow.n_steps
    rtol: Optional[float] = None  # adaptive eval solvers (null: flow.rtol / flow.atol)
    atol: Optional[float] = None
    solver_check: int = 200       # re-solve this many samples with twice the eval steps (0: off)
    nll_samples: int = 2000       # held-out reference samples for the NLL
    test_fraction: float = 0.2    # reference split: this fraction is held out for evaluation
    val_every: int = 0            # log the NLL of held-out reference samples every this many steps (0: off)
    val_samples: int = 200        # held-out samples scored at each validation


@dataclass
class ModelConfig:
    kind: str = "cartesian"       # cartesian (eqflow's E(3) flow: field + flow sections) | ic (internal-coordinate baseline)
    ic_layers: int = 6            # IC: coupling layers (rational-quadratic splines, circular for torsions)
    ic_bins: int = 8              # IC: spline bins
    ic_hidden: int = 128          # IC: conditioner MLP width (two hidden layers)
    ic_bond_width: float = 0.15   # IC: bond boxes are the PDB bond length ± this fraction
    ic_angle_width: float = 0.6   # IC: angle boxes are the PDB angle ± this (radians), within [0, pi]


@dataclass
class FMConfig:
    align: bool = True            # rotate x1 onto x0 (Kabsch, proper rotations only)
    permute: bool = False         # also permute identical particles (Hungarian per atom type; DW4/LJ)
    sigma_min: float = 0.0        # std of the CoM-free noise on the path
    batch_size: int = 256         # pairs per flow-matching term (fm_weight, fm_data_weight)


@dataclass
class BufferConfig:
    capacity: int = 10000         # entries kept (FIFO)
    refresh_every: int = 50       # steps between refreshes (also before the first step)
    refresh_samples: int = 512    # new model samples per refresh
    resample: bool = True         # draw entries by weight (loss unweighted) or uniformly (loss weighted)
    divergence: str = "exact"     # log q of refreshed samples: exact (accurate weights) | hutchinson
    clip_quantile: Optional[float] = None   # cap log weights at this quantile of the buffer's (null: off)
    clip_log_ratio: Optional[float] = None  # cap log weights at max - this (null: off)
    tempering: float = 1.0        # w^β: 1 keeps the weights, 0 makes them uniform
    mcmc_steps: int = 0           # MALA moves on each refreshed sample before it enters the buffer (0: off)
    mcmc_step_size: float = 1e-3  # initial MALA step ε (length²; ~1e-5 nm² for a molecule), adapted per chain
    mcmc_max_drift: Optional[float] = None  # cap on each atom's MALA drift (length; null: none)


@dataclass
class AnnealConfig:
    temperatures: Optional[list] = None     # [T_high, ..., T_target] (K or reduced); null: no annealing
    fractions: Optional[list] = None        # share of train.steps on each rung but the last (K-1 entries)
    steps_per_rung: Optional[Union[int, list]] = None  # or: steps on each rung but the last


@dataclass
class Config:
    target: TargetConfig = dc_field(default_factory=TargetConfig)
    model: ModelConfig = dc_field(default_factory=ModelConfig)
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    flow: FlowConfig = dc_field(default_factory=FlowConfig)
    train: TrainConfig = dc_field(default_factory=TrainConfig)
    eval: EvalConfig = dc_field(default_factory=EvalConfig)
    fm: FMConfig = dc_field(default_factory=FMConfig)
    buffer: BufferConfig = dc_field(default_factory=BufferConfig)
    anneal: AnnealConfig = dc_field(default_factory=AnnealConfig)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a, key)
            except ConfigError:
                pass
        names = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"config key {key!r} must be {names}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (dict, list):
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - all config fields use the types above
        return value
    raise ConfigError(f"config key {key!r} must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; known keys in this section: "
                          f"{', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, tp, prefix + name)
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> Config:
    """Build and validate a :class:`Config` from nested dicts."""
    cfg = _build(Config, data or {}, "")
    _validate(cfg)
    return cfg


def train_solver(cfg: Config) -> SolverSettings:
    """The training solve of ``cfg.flow`` as a :class:`~eqflow.solvers.SolverSettings`."""
    fl = cfg.flow
    return SolverSettings(fl.solver, fl.n_steps, fl.rtol, fl.atol)


def eval_solver(cfg: Config) -> SolverSettings:
    """The evaluation solve: ``eval.solver`` / ``eval.n_steps`` / tolerances, each falling back to
    the training value."""
    ev, fl = cfg.eval, cfg.flow
    return SolverSettings(ev.solver or fl.solver, ev.n_steps or fl.n_steps, ev.rtol or fl.rtol, ev.atol or fl.atol)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path) -> Config:
    """Read a YAML config file (clear errors for a missing file or unknown keys)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML) and re-validate."""
    data = config_to_dict(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[p]
        if parts[-1] not in node and not (len(parts) > 2 and parts[-2] == "kwargs"):
            raise ConfigError(f"unknown config key {key!r}")
        node[parts[-1]] = _parse_value(raw)
    return config_from_dict(data)


def _parse_value(raw: str):
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" as a string
            return float(value)
        except ValueError:
            pass
    return value


_CHOICES = {
    ("model", "kind"): ("cartesian", "ic"),
    ("field", "kind"): ("egnn", "e3nn", "pairwise"),
    ("field", "coord_aggregation"): ("mean", "sum"),
    ("field", "edges"): ("dense", "radius"),
    ("field", "e3nn_backend"): ("e3nn", "cueq"),
    ("flow", "solver"): SOLVERS,
    ("flow", "divergence"): ("exact", "hutchinson"),
    ("flow", "noise"): ("rademacher", "gaussian"),
    ("train", "lr_schedule"): ("constant", "cosine", "exponential"),
    ("train", "schedule_clock"): ("steps", "time"),
    ("train", "kl_gradient"): ("total", "path"),
    ("train", "dtype"): ("float32", "float64"),
    ("eval", "divergence"): ("exact", "hutchinson", "auto"),
    ("flow", "base"): ("gaussian", "harmonic"),
    ("buffer", "divergence"): ("exact", "hutchinson"),
    ("eval", "solver"): (None,) + SOLVERS,
}
_POSITIVE = [("model", "ic_layers"), ("model", "ic_bins"), ("model", "ic_hidden"), ("model", "ic_bond_width"),
             ("model", "ic_angle_width"), ("field", "hidden"), ("field", "length_scale"), ("field", "n_layers"),
             ("field", "n_scalars"), ("field", "n_basis"), ("field", "r_max"), ("field", "radial_hidden"),
             ("flow", "n_steps"), ("flow", "n_components"),
             ("train", "steps"), ("train", "batch_size"), ("train", "lr"), ("train", "grad_clip"),
             ("train", "checkpoint_every"), ("train", "log_every"), ("eval", "n_samples"),
             ("eval", "batch_size"), ("train", "ml_batch_size"), ("fm", "batch_size"), ("buffer", "capacity"),
             ("buffer", "refresh_every"), ("buffer", "refresh_samples")]

_LOSS_WEIGHTS = ("kl_weight", "ml_weight", "fm_weight", "iwml_weight", "fm_data_weight")


def _validate(cfg: Config) -> None:
    for (sec, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, sec), key)
        if value not in choices:
            raise ConfigError(f"config key '{sec}.{key}' must be one of {choices}, got {value!r}")
    for sec, key in _POSITIVE:
        value = getattr(getattr(cfg, sec), key)
        if value <= 0:
            raise ConfigError(f"config key '{sec}.{key}' must be positive, got {value!r}")
    weights = {k: getattr(cfg.train, k) for k in _LOSS_WEIGHTS}
    for key, w in weights.items():
        if not w >= 0:
            raise ConfigError(f"config key 'train.{key}' must be >= 0, got {w!r}")
    if sum(weights.values()) == 0:
        raise ConfigError(f"config keys {', '.join('train.' + k for k in _LOSS_WEIGHTS)}: at least one must be > 0")
    for key in ("kinetic_weight", "jacobian_weight"):
        if getattr(cfg.train, key) < 0:
            raise ConfigError(f"config key 'train.{key}' must be >= 0, got {getattr(cfg.train, key)!r}")
    if cfg.train.kl_gradient == "path" and cfg.train.kl_weight > 0:
        if cfg.flow.n_components > 1:
            raise ConfigError("config key 'train.kl_gradient' is 'path', which needs flow.n_components = 1 "
                              f"(a mixture's component draw is not reparameterizable), got {cfg.flow.n_components}")
        if cfg.train.kinetic_weight > 0 or cfg.train.jacobian_weight > 0:
            raise ConfigError("config key 'train.kl_gradient' is 'path', which does not take the transport-cost "
                              "regularizers: set train.kinetic_weight and train.jacobian_weight to 0")
        if cfg.model.kind != "cartesian":
            raise ConfigError(f"config key 'train.kl_gradient': path is for model.kind cartesian (continuous "
                              f"flows), got {cfg.model.kind!r}")
    if not 0.0 <= cfg.train.kl_alpha <= 1.0:
        raise ConfigError(f"config key 'train.kl_alpha' must be in [0, 1] (1: reverse KL), got {cfg.train.kl_alpha!r}")
    for key in ("solve_check_every", "solve_check_samples"):
        if int(getattr(cfg.train, key)) != getattr(cfg.train, key) or getattr(cfg.train, key) < 0:
            raise ConfigError(f"config key 'train.{key}' must be a whole number >= 0, got {getattr(cfg.train, key)!r}")
    if cfg.train.solve_check_every > 0 and cfg.train.solve_check_samples < 1:
        raise ConfigError("config key 'train.solve_check_samples' must be >= 1 when train.solve_check_every > 0")
    if cfg.train.solve_check_refine and not cfg.train.solve_check_every:
        raise ConfigError("config key 'train.solve_check_refine' needs train.solve_check_every > 0 (the check that "
                          "triggers it)")
    if cfg.train.solve_check_refine and cfg.flow.n_steps > cfg.train.solve_check_max_steps:
        raise ConfigError(f"config key 'train.solve_check_max_steps' ({cfg.train.solve_check_max_steps}) is below "
                          f"flow.n_steps ({cfg.flow.n_steps})")
    if not cfg.train.solve_check_warn > 0:
        raise ConfigError(f"config key 'train.solve_check_warn' must be positive (nats), got {cfg.train.solve_check_warn!r}")
    if not 0.0 <= cfg.train.kl_alpha_from <= 1.0:
        raise ConfigError(f"config key 'train.kl_alpha_from' must be in [0, 1] (a share of training), "
                          f"got {cfg.train.kl_alpha_from!r}")
    if cfg.train.kl_alpha != 1.0 and cfg.model.kind == "cartesian" and cfg.flow.divergence != "exact":
        # Measured on DW4: Hutchinson's probe noise in log q takes the batch ESS from ~0.75 (exact) to
        # ~0.01, so the weights select probe noise, and the loss got worse after the switch.
        raise ConfigError("config key 'train.kl_alpha' < 1 weights samples by their log-density, which needs "
                          "flow.divergence: exact (Hutchinson's probe noise makes the weights meaningless)")
    if cfg.train.kl_alpha != 1.0 and cfg.train.kl_gradient == "path":
        raise ConfigError("config key 'train.kl_alpha' < 1 needs train.kl_gradient: total (the path gradient has no "
                          "sample weights)")
    if cfg.field.n_env < 0:  # (an int already: the loader checks the type)
        raise ConfigError(f"config key 'field.n_env' must be a whole number >= 0, got {cfg.field.n_env!r}")
    if cfg.field.n_env and cfg.field.kind != "pairwise":
        raise ConfigError(f"config key 'field.n_env' is for field.kind pairwise, got {cfg.field.kind!r}")
    if cfg.train.budget_minutes is not None and not cfg.train.budget_minutes > 0:
        raise ConfigError(f"config key 'train.budget_minutes' must be positive or null, got {cfg.train.budget_minutes!r}")
    if cfg.train.schedule_clock == "time" and cfg.train.budget_minutes is None:
        raise ConfigError("config key 'train.schedule_clock' is 'time' but train.budget_minutes is null: "
                          "a wall-clock schedule needs a budget")
    if cfg.train.warmup_steps < 0:
        raise ConfigError(f"config key 'train.warmup_steps' must be >= 0, got {cfg.train.warmup_steps!r}")
    if cfg.target.force_clip is not None and not cfg.target.force_clip > 0:
        raise ConfigError(f"config key 'target.force_clip' must be positive (kT per length unit) or null, "
                          f"got {cfg.target.force_clip!r}")
    if not cfg.target.energy_cut >= 0:
        raise ConfigError(f"config key 'target.energy_cut' must be >= 0 (kT), got {cfg.target.energy_cut!r}")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"config key 'train.ema_decay' must be in [0, 1), got {cfg.train.ema_decay!r}")
    if not 0 <= cfg.train.skip_warning_fraction <= 1:
        raise ConfigError("config key 'train.skip_warning_fraction' must be in [0, 1], "
                          f"got {cfg.train.skip_warning_fraction!r}")
    for key in ("edge_channels", "avg_num_neighbors"):
        value = getattr(cfg.field, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key 'field.{key}' must be positive or null, got {value!r}")
    if cfg.field.kind == "e3nn":
        if cfg.field.lmax < 1:  # l = 1 harmonics carry the direction of each pair
            raise ConfigError(f"config key 'field.lmax' must be >= 1, got {cfg.field.lmax!r}")
        from e3nn import o3

        try:
            irreps = o3.Irreps(cfg.field.hidden_irreps)
        except (ValueError, AssertionError) as exc:
            raise ConfigError(f"config key 'field.hidden_irreps' is not an irreps string: "
                              f"{cfg.field.hidden_irreps!r} ({exc})") from None
        if o3.Irrep("1o") not in {ir for _, ir in irreps}:
            raise ConfigError(f"config key 'field.hidden_irreps' must include 1o channels, got "
                              f"{cfg.field.hidden_irreps!r}")
    if cfg.eval.n_steps is not None and cfg.eval.n_steps < 1:
        raise ConfigError(f"config key 'eval.n_steps' must be positive or null, got {cfg.eval.n_steps!r}")
    for key in ("ml_weight", "fm_data_weight"):
        if getattr(cfg.train, key) > 0 and not cfg.target.reference:
            raise ConfigError(f"'train.{key}' > 0 needs reference samples: set 'target.reference'")
    _validate_objectives(cfg)
    scales = cfg.flow.base_scale if isinstance(cfg.flow.base_scale, list) else [cfg.flow.base_scale]
    if any((not isinstance(s, (int, float))) or s <= 0 for s in scales):
        raise ConfigError(f"config key 'flow.base_scale' must be positive numbers, got {cfg.flow.base_scale!r}")
    if isinstance(cfg.flow.base_scale, list) and len(scales) != cfg.flow.n_components:
        raise ConfigError(f"config key 'flow.base_scale' has {len(scales)} entries but "
                          f"flow.n_components = {cfg.flow.n_components}")
    if cfg.flow.adjoint and cfg.flow.checkpoint:
        raise ConfigError("config keys 'flow.adjoint' and 'flow.checkpoint' cannot both be true")
    if not 0 < cfg.eval.test_fraction < 1:
        raise ConfigError(f"config key 'eval.test_fraction' must be in (0, 1), got {cfg.eval.test_fraction}")


def _validate_objectives(cfg: Config) -> None:
    """The flow-matching, buffer, annealing and base keys (issue #8)."""
    if cfg.model.kind != "cartesian" and cfg.train.fm_weight + cfg.train.fm_data_weight > 0:
        raise ConfigError(f"config keys 'train.fm_weight' / 'train.fm_data_weight' need model.kind: cartesian "
                          f"(flow matching trains a vector field), got {cfg.model.kind!r}")
    if cfg.model.kind != "cartesian" and cfg.flow.base != "gaussian":
        raise ConfigError(f"config key 'flow.base' applies to model.kind: cartesian only, got {cfg.model.kind!r}")
    if cfg.fm.sigma_min < 0:
        raise ConfigError(f"config key 'fm.sigma_min' must be >= 0, got {cfg.fm.sigma_min!r}")
    if cfg.fm.permute and not cfg.fm.align:
        raise ConfigError("config key 'fm.permute' needs 'fm.align': true (the permutation is found with the rotation)")
    b = cfg.buffer
    if b.clip_quantile is not None and not 0 < b.clip_quantile <= 1:
        raise ConfigError(f"config key 'buffer.clip_quantile' must be in (0, 1] or null, got {b.clip_quantile!r}")
    if b.clip_log_ratio is not None and not b.clip_log_ratio > 0:
        raise ConfigError(f"config key 'buffer.clip_log_ratio' must be positive or null, got {b.clip_log_ratio!r}")
    if not 0 <= b.tempering <= 1:
        raise ConfigError(f"config key 'buffer.tempering' must be in [0, 1], got {b.tempering!r}")
    if b.mcmc_steps < 0:
        raise ConfigError(f"config key 'buffer.mcmc_steps' must be >= 0, got {b.mcmc_steps!r}")
    if not b.mcmc_step_size > 0:
        raise ConfigError(f"config key 'buffer.mcmc_step_size' must be positive, got {b.mcmc_step_size!r}")
    if b.mcmc_max_drift is not None and not b.mcmc_max_drift > 0:
        raise ConfigError(f"config key 'buffer.mcmc_max_drift' must be positive or null, got {b.mcmc_max_drift!r}")
    if b.mcmc_steps > 0 and b.tempering != 0:
        # Chain states are not draws of q: -u - log q at them is no importance weight. Training on
        # them unweighted is maximum likelihood on a p-invariant chain's states (fixed point q = p).
        raise ConfigError(f"config key 'buffer.mcmc_steps' > 0 needs 'buffer.tempering': 0 (MALA-refined "
                          f"samples are trained on unweighted), got {b.tempering!r}")
    if cfg.flow.harmonic_k < 0 or cfg.flow.harmonic_eps < 0:
        raise ConfigError("config keys 'flow.harmonic_k' and 'flow.harmonic_eps' must be >= 0, got "
                          f"{cfg.flow.harmonic_k!r} and {cfg.flow.harmonic_eps!r}")
    a = cfg.anneal
    if a.temperatures is None:
        if a.fractions is not None or a.steps_per_rung is not None:
            raise ConfigError("config keys 'anneal.fractions' / 'anneal.steps_per_rung' need 'anneal.temperatures'")
        return
    temps = a.temperatures
    if not temps or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 for t in temps):
        raise ConfigError(f"config key 'anneal.temperatures' must be a non-empty list of positive numbers, got {temps!r}")
    if any(b_ > a_ for a_, b_ in zip(temps, temps[1:])):
        raise ConfigError(f"config key 'anneal.temperatures' must not increase (high T first, target last), got {temps!r}")
    if "temperature" in cfg.target.kwargs and float(temps[-1]) != float(cfg.target.kwargs["temperature"]):
        raise ConfigError(f"config key 'anneal.temperatures' must end at the target's temperature "
                          f"(target.kwargs.temperature = {cfg.target.kwargs['temperature']!r}), got {temps[-1]!r}")
    if len(temps) > 1 and (a.fractions is None) == (a.steps_per_rung is None):
        raise ConfigError("give exactly one of 'anneal.fractions' and 'anneal.steps_per_rung' for an annealing ladder")
    if a.fractions is not None:
        fr = a.fractions
        if len(fr) != len(temps) - 1 or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f < 0 for f in fr) \
                or sum(fr) > 1 + 1e-12:
            raise ConfigError(f"config key 'anneal.fractions' needs {len(temps) - 1} non-negative numbers summing to "
                              f"at most 1, got {fr!r}")
    if a.steps_per_rung is not None:
        spr = a.steps_per_rung if isinstance(a.steps_per_rung, list) else [a.steps_per_rung]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in spr) or \
                (isinstance(a.steps_per_rung, list) and len(spr) not in (len(temps) - 1, len(temps))):
            raise ConfigError(f"config key 'anneal.steps_per_rung' must be a non-negative int or a list of "
                              f"{len(temps) - 1} ints, got {a.steps_per_rung!r}")
