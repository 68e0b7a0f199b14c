"""One training run from a config: build, train, evaluate, plot, summarize. Used by scripts/train_eq.py."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import yaml

from ..builders import build_flow, build_target
from ..config import Config, config_from_dict, config_to_dict
from ..distributions import ensure_particle_reference, load_reference, split_reference
from ..evaluation.plots import plot_training_curves
from ..evaluation.report import evaluate_generator, format_summary, save_summary
from ..generator import Generator
from .trainer import Trainer, seed_everything

__all__ = ["run_training", "resolve_reference", "PARTICLE_SYSTEMS"]

PARTICLE_SYSTEMS = ("dw4", "lj13", "lj55")


def resolve_reference(cfg: Config, target=None):
    """Load ``cfg.target.reference`` and split it: ``(train, test)`` or ``(None, None)``.

    ``"auto"`` generates (once) and caches an MCMC reference for the particle systems; for other
    targets it means none.
    """
    ref = cfg.target.reference
    if ref is None:
        return None, None
    if ref == "auto":
        if cfg.target.name.lower() not in PARTICLE_SYSTEMS:
            warnings.warn(f"no automatic reference for target {cfg.target.name!r}: set target.reference to a "
                          "trajectory (scripts/simulate_md.py) for reference metrics", stacklevel=2)
            return None, None
        path = ensure_particle_reference(cfg.target.name, cache_dir=cfg.target.reference_cache)
    else:
        path = Path(ref)
    kwargs = {}
    if path.suffix in (".h5", ".dcd") and target is not None:
        kwargs = dict(topology=getattr(target, "topology", None))
    data = load_reference(path, **kwargs)
    return split_reference(data, fraction=1.0 - cfg.eval.test_fraction, seed=cfg.train.seed)


def _dtype(cfg: Config):
    return torch.float64 if cfg.train.dtype == "float64" else torch.float32


def run_training(cfg: Config, out_dir, resume: bool = False, progress: bool = True,
                 evaluate: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir`` (``config.yaml``, ``checkpoint.pt``, ``metrics.jsonl``, plots,
    ``summary.json``); with ``resume`` continue from the checkpoint there. Returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        saved = out_dir / "config.yaml"
        if not (out_dir / "checkpoint.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {out_dir}")
        if saved.exists():
            old = config_from_dict(yaml.safe_load(saved.read_text()))
            for section in ("target", "field", "flow"):
                if getattr(old, section) != getattr(cfg, section):
                    raise ValueError(f"--resume: config section '{section}' differs from the run in {out_dir}; "
                                     "only train/eval settings may change on resume")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    seed_everything(cfg.train.seed)
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(_dtype(cfg))
    try:
        target = build_target(cfg)
        flow = build_flow(cfg, target).to(cfg.train.device)
        train_ref, test_ref = resolve_reference(cfg, target)
        if train_ref is not None:
            train_ref.positions = train_ref.positions.to(_dtype(cfg))
        if test_ref is not None:
            test_ref.positions = test_ref.positions.to(_dtype(cfg))
        trainer = Trainer(cfg, flow, target, out_dir, train_data=train_ref, progress=progress, val_data=test_ref)
        if resume:
            trainer.load()
        train_summary = trainer.train()
        records = [json.loads(line) for line in trainer.metrics_path.read_text().splitlines() if line.strip()]
        if records:
            plot_training_curves(records, out_dir / "training_curves.png")
        summary = {"target": cfg.target.name, **train_summary}
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
