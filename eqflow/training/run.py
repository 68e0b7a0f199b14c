"""One training run from a config: build, train, evaluate, plot, summarize. Used by scripts/train_eq.py."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
import yaml

from .. import distributed as dd
from ..builders import build_model, build_target
from ..checkpoint import previous_path
from ..config import Config, ConfigError, config_from_dict, config_to_dict
from ..distributions import ensure_particle_reference, load_reference, split_reference
from ..distributions.reference import reference_path
from ..evaluation.plots import plot_mode_diagnostics, plot_training_curves
from ..flows import ContinuousFlow
from ..evaluation.report import evaluate_generator, format_summary, save_summary
from ..errors import RunFolderError
from ..generator import Generator, resolve_eval_divergence
from ..models import is_ode_model
from .trainer import CHECKPOINT_NAME, Trainer, seed_everything

__all__ = ["run_training", "resolve_reference", "prepare_run_folder", "check_device", "read_metrics",
           "PARTICLE_SYSTEMS"]

PARTICLE_SYSTEMS = ("dw4", "lj13", "lj55")


def resolve_reference(cfg: Config, target=None, progress: bool = True, generate: bool = True):
    """Load ``cfg.target.reference`` and split it: ``(train, test)`` or ``(None, None)``.

    ``"auto"`` generates (once) and caches an MCMC reference for the particle systems; for other
    targets it means none. With ``generate=False`` a missing cached reference is waited for instead
    (the other ranks under torchrun, while rank 0 generates it: one MCMC run, not one per rank).
    """
    ref = cfg.target.reference
    if ref is None:
        return None, None
    if ref == "auto":
        if cfg.target.name.lower() not in PARTICLE_SYSTEMS:
            warnings.warn(f"no automatic reference for target {cfg.target.name!r}: set target.reference to a "
                          "trajectory (scripts/simulate_md.py) for reference metrics", stacklevel=2)
            return None, None
        if generate:
            path = ensure_particle_reference(cfg.target.name, cache_dir=cfg.target.reference_cache,
                                             progress=progress)
        else:
            path = dd.wait_for_path(reference_path(cfg.target.name, cfg.target.reference_cache),
                                    what="MCMC reference")
    else:
        path = Path(ref)
        if not path.exists():
            raise ConfigError(f"config key 'target.reference': reference file not found: {path}")
    kwargs = {}
    if path.suffix in (".h5", ".dcd") and target is not None:
        kwargs = dict(topology=getattr(target, "topology", None))
    data = load_reference(path, **kwargs)
    return split_reference(data, fraction=1.0 - cfg.eval.test_fraction, seed=cfg.train.seed)


def _dtype(cfg: Config):
    return torch.float64 if cfg.train.dtype == "float64" else torch.float32


def check_device(device: str) -> None:
    """One-line ConfigError when ``device`` (e.g. ``cuda``, ``cuda:1``, ``mps``) is not usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"config key 'train.device': {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available: this torch has no CUDA device "
                              f"(torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available")


def prepare_run_folder(out_dir, cfg: Config, resume: bool, overwrite: bool) -> Path:
    """Check that ``out_dir`` may be used as asked and clear it for ``overwrite``.

    Raises :class:`~eqflow.errors.RunFolderError` (one line) for a fresh run into a folder that holds
    a run, for ``resume`` without a checkpoint, for both flags at once, and for a resume whose model
    sections (target, field, flow) differ from the saved config.
    """
    out_dir = Path(out_dir)
    ck = out_dir / CHECKPOINT_NAME
    has_run = ck.exists() or previous_path(ck).exists()
    if resume and overwrite:
        raise RunFolderError("choose one of --resume and --overwrite")
    if resume:
        if not has_run:
            raise RunFolderError(f"--resume: no checkpoint in {out_dir}")
        saved = out_dir / "config.yaml"
        if saved.exists():
            old = config_from_dict(yaml.safe_load(saved.read_text()))
            for section in ("target", "field", "flow"):
                if getattr(old, section) != getattr(cfg, section):
                    raise RunFolderError(f"--resume: config section '{section}' differs from the run in {out_dir}; "
                                         "only train/eval settings may change on resume")
    elif has_run:
        if not overwrite:
            raise RunFolderError(f"{out_dir} already holds a run (checkpoint.pt); continue it with --resume "
                                 "or replace it with --overwrite")
        for name in (CHECKPOINT_NAME, previous_path(ck).name, "metrics.jsonl", "summary.json"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def run_training(cfg: Config, out_dir, resume: bool = False, progress: bool = True,
                 evaluate: bool = True, overwrite: bool = False) -> dict:
    """Train ``cfg`` into ``out_dir`` (``config.yaml``, ``checkpoint.pt``, ``metrics.jsonl``, plots,
    ``summary.json``); with ``resume`` continue from the checkpoint there, with ``overwrite`` replace
    a run that is there (otherwise such a folder is refused). Returns the summary.

    Under ``torchrun`` every rank trains its share of each batch (:mod:`eqflow.distributed`); rank 0
    writes the run folder and evaluates (the other ranks return the training summary). The run
    folder must be on a file system every rank sees (for ``--resume`` checks; rank 0 reads the
    checkpoint and sends it to the others).
    """
    check_device(cfg.train.device)
    joined_here = not dd.dist_info().enabled  # a caller's own process group is left to the caller
    info = dd.init_distributed(cfg.train.device)
    device = dd.rank_device(cfg.train.device, info)
    if info.is_main:
        out_dir = prepare_run_folder(out_dir, cfg, resume, overwrite)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    else:
        out_dir = Path(out_dir)
    dd.barrier()
    seed_everything(cfg.train.seed)  # the same initial parameters on every rank
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(_dtype(cfg))
    try:
        target = build_target(cfg)
        flow = build_model(cfg, target).to(device)
        train_ref, test_ref = resolve_reference(cfg, target, progress=progress and info.is_main,
                                                generate=info.is_main)
        if train_ref is not None:
            train_ref.positions = train_ref.positions.to(_dtype(cfg))
        if test_ref is not None:
            test_ref.positions = test_ref.positions.to(_dtype(cfg))
        _check_ladder_end(cfg, target)
        ev = cfg.eval
        trainer = Trainer(flow, target, cfg.train, out_dir=out_dir, train_data=train_ref, val_data=test_ref,
                          energy_cut=cfg.target.energy_cut, force_clip=cfg.target.force_clip,
                          val_every=ev.val_every, val_samples=ev.val_samples,
                          val_batch_size=ev.batch_size,
                          val_log_prob=((lambda x: flow.log_prob(x, divergence=resolve_eval_divergence(
                                            ev.divergence, flow.n_atoms, flow.dim, x.device, getattr(flow, "field", None))))
                                        if is_ode_model(flow) else None),
                          metadata={"config": config_to_dict(cfg)}, overwrite=True, progress=progress,
                          fm_settings=cfg.fm, buffer_settings=cfg.buffer, anneal_settings=cfg.anneal,
                          sample_fn=_refresh_sampler(flow, cfg))
        if resume:
            trainer.load()
        train_summary = trainer.train()
        if is_ode_model(flow):  # a solve refined in training (train.solve_check_refine) is the model's solve now
            # (a copy: the caller's config stays as it was given)
            cfg = dataclasses.replace(cfg, flow=dataclasses.replace(
                cfg.flow, solver=flow.solver, n_steps=flow.n_steps, rtol=flow.rtol, atol=flow.atol))
        trainer.apply_ema()  # evaluate (and keep in memory) the averaged weights, as the checkpoint does
        summary = {"target": cfg.target.name, **train_summary}
        if not info.is_main:
            return summary
        records = read_metrics(trainer.metrics_path)
        if records:
            plot_training_curves(records, out_dir / "training_curves.png")
            if any("buffer_ess" in r for r in records):
                plot_mode_diagnostics(records, out_dir / "modes.png")
        if evaluate:
            gen = Generator(flow, target, cfg)
            summary.update(evaluate_generator(gen, test_ref, out_dir=out_dir, progress=progress))
        save_summary(summary, out_dir / "summary.json")
        print(format_summary(summary, f"eqflow summary: {cfg.target.name} ({out_dir})"))
        return summary
    finally:
        torch.set_default_dtype(old_dtype)
        close = getattr(locals().get("target"), "close", None)
        if callable(close):
            close()
        if joined_here:
            # Leave the group explicitly: a rank that exits with a live gloo group (the other ranks
            # return while rank 0 still evaluates) can abort in the group's destructor at
            # interpreter exit ("terminate called without an active exception", SIGABRT).
            dd.close_distributed()


def _check_ladder_end(cfg: Config, target) -> None:
    from ..targets import target_temperature
    temps = cfg.anneal.temperatures
    if temps and abs(float(temps[-1]) - target_temperature(target)) > 1e-9 * target_temperature(target):
        raise ConfigError(f"config key 'anneal.temperatures' must end at the target's temperature "
                          f"{target_temperature(target)}, got {temps[-1]}")


def _refresh_sampler(flow, cfg: Config):
    """``n -> (x, log_q)`` for buffer refreshes, with ``buffer.divergence`` (None: the model's own)."""
    if not isinstance(flow, ContinuousFlow):
        return None
    return lambda n: flow.sample(n, divergence=cfg.buffer.divergence)


def read_metrics(path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file; a line cut short by a killed write is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
