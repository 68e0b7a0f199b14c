"""Ablation of the data-free objectives (issue #8): the same wall-clock budget for each variant, one table.

A variant is a base config plus ``section.key=value`` overrides (:func:`eqflow.config.apply_overrides`).
Each variant trains with ``scripts/train_eq.py`` (the run layer, :func:`eqflow.training.run_training`)
into ``<out>/<name>/`` and is evaluated there with its config's ``eval`` settings; the table is then
read from each run's ``summary.json`` (:func:`collect_results`) and printed with
:func:`eqflow.comparison.format_comparison` (:data:`ABLATION_ROWS`).

Variant sets (:data:`VARIANT_SETS`; or a YAML file, :func:`load_variant_set`):

- ``ala2`` (default): alanine dipeptide, implicit solvent, 300 K. ``rkl`` plain reverse KL
  (``configs/ala2_implicit.yaml``); ``fm`` importance-weighted flow matching on the replay buffer
  (``configs/ala2_implicit_fm.yaml`` with a Gaussian base and no annealing); ``fm+anneal``,
  ``fm+mixture`` (``flow.n_components=2``), ``fm+harmonic`` (bond-graph base): one ingredient added
  to ``fm`` each; ``best``: all of them together (``ala2_implicit_fm.yaml`` + a 2-component mixture).
- ``dw4``: the same ladder on DW4 (no harmonic base: particles have no bonds); minutes, not hours.

Every variant of a set also gets the set's ``common`` overrides (``train.schedule_clock=time``: the learning
rate schedule follows the wall-clock budget, so each variant ends at ``lr_final`` whatever its speed;
for alanine ``eval.divergence=auto``: one evaluation divergence for all, exact on a GPU and Hutchinson
on a CPU) and the budget (``train.budget_minutes``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .comparison import ESS_RELIABILITY_ROWS
from .config import Config, ConfigError, apply_overrides, load_config
from .errors import EqflowError
from .evaluation.report import add_delta_f_error

__all__ = ["Variant", "VariantSet", "VARIANT_SETS", "ABLATION_ROWS", "load_variant_set", "variant_config",
           "variant_state", "train_command", "run_ablation", "collect_results", "format_ablation",
           "ablation_title", "ablation_notes"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """A named base config (path; relative paths are resolved against the repository root) and overrides."""
    name: str
    config: str
    overrides: tuple = ()
    description: str = ""

    def config_path(self, base_dir: Path | None = None) -> Path:
        path = Path(self.config)
        if path.is_absolute():
            return path
        if base_dir is not None and (base_dir / path).exists():
            return base_dir / path
        return ROOT / path


@dataclass(frozen=True)
class VariantSet:
    name: str
    variants: tuple
    common: tuple = ()             # overrides applied to every variant (before the variant's own)
    base_dir: Path | None = None   # where relative config paths are looked up first (a variants file's folder)
    description: str = ""

    def select(self, names=None) -> list:
        """The variants named in ``names`` (all when None), in the set's order; unknown names raise."""
        if not names:
            return list(self.variants)
        known = {v.name: v for v in self.variants}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"unknown variant {unknown[0]!r} in set {self.name!r}; known: {', '.join(known)}")
        return [v for v in self.variants if v.name in set(names)]


# -- the built-in sets ------------------------------------------------------------------------------
_ALA_GAUSSIAN = ("flow.base=gaussian", "flow.base_scale=0.15")  # as ala2_implicit.yaml: sigma 0.15 nm
_NO_ANNEAL = ("anneal.temperatures=null", "anneal.fractions=null", "anneal.steps_per_rung=null")
_ALA_FM = "configs/ala2_implicit_fm.yaml"

_ALA2 = VariantSet("ala2", (
    Variant("rkl", "configs/ala2_implicit.yaml", (), "plain reverse KL"),
    Variant("fm", _ALA_FM, _ALA_GAUSSIAN + _NO_ANNEAL,
            "IW flow matching on the buffer (+0.1 reverse KL), Gaussian base, 300 K only"),
    Variant("fm+anneal", _ALA_FM, _ALA_GAUSSIAN, "fm + annealing 600 -> 424 -> 300 K"),
    Variant("fm+mixture", _ALA_FM, _ALA_GAUSSIAN + _NO_ANNEAL + ("flow.n_components=2",),
            "fm + 2-component mixture base"),
    Variant("fm+harmonic", _ALA_FM, _NO_ANNEAL, "fm + harmonic (bond-graph) base"),
    Variant("best", _ALA_FM, ("flow.n_components=2",), "fm + annealing + harmonic 2-component mixture"),
), common=("train.schedule_clock=time", "eval.divergence=auto"),
    description="alanine dipeptide, implicit solvent (amber96_obc), 300 K, data-free")

_DW4_FM = "configs/dw4_fm.yaml"
_DW4 = VariantSet("dw4", (
    Variant("rkl", "configs/dw4.yaml", (), "plain reverse KL"),
    Variant("fm", _DW4_FM, _NO_ANNEAL, "IW flow matching on the buffer (+0.1 reverse KL), tau = 1 only"),
    Variant("fm+anneal", _DW4_FM, (), "fm + annealing tau 3 -> 1.7 -> 1"),
    Variant("fm+mixture", _DW4_FM, _NO_ANNEAL + ("flow.n_components=2",), "fm + 2-component mixture base"),
    Variant("best", _DW4_FM, ("flow.n_components=2",), "fm + annealing + 2-component mixture"),
), common=("train.schedule_clock=time",), description="DW4, data-free")

VARIANT_SETS = {"ala2": _ALA2, "dw4": _DW4}


def load_variant_set(name_or_path) -> VariantSet:
    """A built-in set (:data:`VARIANT_SETS`) or a YAML file of the form::

        description: my ablation            # optional
        common: [train.schedule_clock=time]       # optional, applied to every variant
        variants:
          - {name: rkl, config: configs/dw4.yaml, overrides: [], description: plain reverse KL}
          - {name: fm, config: configs/dw4_fm.yaml, overrides: [anneal.temperatures=null, ...]}

    Relative config paths are looked up beside the file first, then in the repository.
    """
    key = str(name_or_path)
    if key in VARIANT_SETS:
        return VARIANT_SETS[key]
    path = Path(key)
    if not path.is_file():
        raise ConfigError(f"variant set {key!r}: neither a built-in set ({', '.join(VARIANT_SETS)}) nor a file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) or not data["variants"]:
        raise ConfigError(f"{path}: needs a non-empty list 'variants' of {{name, config, overrides}}")
    unknown = sorted(set(data) - {"variants", "common", "description"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: variants, common, description)")
    variants = []
    for i, v in enumerate(data["variants"]):
        if not isinstance(v, dict) or "name" not in v or "config" not in v:
            raise ConfigError(f"{path}: variant {i} needs 'name' and 'config'")
        extra = sorted(set(v) - {"name", "config", "overrides", "description"})
        if extra:
            raise ConfigError(f"{path}: variant {v['name']!r}: unknown key {extra[0]!r}")
        variants.append(Variant(str(v["name"]), str(v["config"]), tuple(str(o) for o in v.get("overrides") or ()),
                                str(v.get("description", ""))))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: variant names must be unique, got {names}")
    return VariantSet(path.stem, tuple(variants), tuple(str(o) for o in data.get("common") or ()),
                      base_dir=path.parent.resolve(), description=str(data.get("description", "")))


def _overrides(vset: VariantSet, variant: Variant, extra=(), budget_minutes: float | None = None) -> list:
    budget = [] if budget_minutes is None else [f"train.budget_minutes={budget_minutes}"]
    return [*vset.common, *variant.overrides, *extra, *budget]


def variant_config(vset: VariantSet, variant: Variant, extra=(), budget_minutes: float | None = None) -> Config:
    """The validated :class:`Config` of ``variant``: its base config with the set's common overrides,
    the variant's own, ``extra`` (e.g. ``--set`` on the command line) and the budget, in that order."""
    path = variant.config_path(vset.base_dir)
    try:
        return apply_overrides(load_config(path), _overrides(vset, variant, extra, budget_minutes))
    except (ConfigError, FileNotFoundError) as err:
        raise ConfigError(f"variant {variant.name!r} ({path}): {err}") from None


def variant_state(run_dir) -> str:
    """``"done"`` (evaluated: summary.json with an ESS), ``"partial"`` (a checkpoint, no summary) or ``"new"``."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            if "ess" in json.loads(summary.read_text()):
                return "done"
        except json.JSONDecodeError:
            pass
    if (run_dir / "checkpoint.pt").exists() or (run_dir / "checkpoint.pt.prev").exists():
        return "partial"
    return "new"


def train_command(vset: VariantSet, variant: Variant, run_dir, extra=(), budget_minutes: float | None = None,
                  resume: bool = False, overwrite: bool = False) -> list:
    """The ``scripts/train_eq.py`` command line that trains and evaluates ``variant`` into ``run_dir``."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train_eq.py"), "--config", str(variant.config_path(vset.base_dir)),
           "--out", str(run_dir), "--no-progress", "--set", *_overrides(vset, variant, extra, budget_minutes)]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def run_ablation(vset: VariantSet, out, names=None, budget_minutes: float = 30.0, extra=(), jobs: int = 1,
                 resume: bool = False, overwrite: bool = False, threads: int | None = None,
                 log=print) -> dict:
    """Train and evaluate the variants ``names`` of ``vset`` (all when None) into ``out/<name>/``.

    Every variant config is validated before anything trains. ``jobs`` variants run at a time, each a
    ``train_eq.py`` process with ``threads`` torch threads (default: 1 when ``jobs > 1``, else the
    environment's). With ``resume``, finished variants (summary.json) are skipped and interrupted ones
    continue from their checkpoint; without it, a variant folder that already holds a run is an error
    unless ``overwrite``. Output of each process goes to ``out/logs/<name>.log``.

    Returns name -> ``{"status": "done" | "skipped" | "failed", "log": path, "process_seconds": s}``,
    also written to ``out/ablation_runs.json``.
    """
    out = Path(out)
    variants = vset.select(names)
    for v in variants:  # fail fast: every config must be valid before hours of training start
        variant_config(vset, v, extra, budget_minutes)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    todo, status = [], {}
    for v in variants:
        state = variant_state(out / v.name)
        if resume and state == "done":
            status[v.name] = {"status": "skipped", "reason": "finished before (--resume)"}
            log(f"{v.name}: finished before, skipped")
            continue
        if state != "new" and not (resume or overwrite):
            raise EqflowError(f"{out / v.name} already holds a run: continue with --resume or replace with --overwrite")
        todo.append((v, resume and state == "partial"))
    threads = threads if threads is not None else (1 if jobs > 1 else None)
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running = {}
    pending = list(todo)
    while pending or running:
        while pending and len(running) < jobs:
            v, cont = pending.pop(0)
            cmd = train_command(vset, v, out / v.name, extra, budget_minutes, resume=cont,
                                overwrite=overwrite and not cont)
            logf = out / "logs" / f"{v.name}.log"
            fh = open(logf, "a" if cont else "w")
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            log(f"{v.name}: {'resuming' if cont else 'training'} ({v.description}); log {logf}")
            running[v.name] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env),
                               fh, time.time(), logf)
        time.sleep(0.2)
        for name in list(running):
            proc, fh, t0, logf = running[name]
            if proc.poll() is None:
                continue
            fh.close()
            del running[name]
            ok = proc.returncode == 0
            status[name] = {"status": "done" if ok else "failed", "returncode": proc.returncode,
                            "log": str(logf), "process_seconds": round(time.time() - t0, 1)}
            log(f"{name}: {'done' if ok else f'FAILED (exit {proc.returncode}, see {logf})'}")
    order = [v.name for v in variants]
    status = {n: status[n] for n in order}
    (out / "ablation_runs.json").write_text(json.dumps(status, indent=2))
    return status


# (summary key, label) in the order of the printed table
ABLATION_ROWS = [
    ("status", "status"),
    ("ess", "ESS (fraction of n)"),
    *ESS_RELIABILITY_ROWS,
    ("eval_divergence", "  divergence of the ESS log q"),
    ("n_samples", "  model samples evaluated"),
    ("nll", "NLL on the reference (nats)"),
    ("delta_f_reweighted", "ΔF(phi) reweighted (kT)"),
    ("delta_f_reweighted_std", "  bootstrap error (kT)"),
    ("ref_delta_f", "ΔF(phi) MD reference (kT)"),
    ("delta_f_error", "|ΔF error| (kT)"),
    ("pop_phi>0_raw", "P(phi>0) raw"),
    ("pop_phi>0_reweighted", "P(phi>0) reweighted"),
    ("ref_pop_phi>0", "P(phi>0) MD reference"),
    ("rama_kl_raw", "Ramachandran KL raw"),
    ("rama_kl_reweighted", "Ramachandran KL reweighted"),
    ("energy_w1_raw", "energy W1 raw (kT)"),
    ("energy_w1_reweighted", "energy W1 reweighted (kT)"),
    ("energy_evaluations", "energy evaluations in training"),
    ("train_seconds", "training wall time (s)"),
    ("seconds_per_step", "seconds per step"),
    ("steps", "training steps"),
    ("logq_solver_mae", "log q solver error, evaluation (nats)"),
    ("train_solve_gap", "training solve vs 2x steps, last check (nats)"),
    ("train_solve_steps", "training solve steps at the end"),
    ("final_temperature", "final training temperature"),
    ("stop_reason", "stopped by"),
]


def collect_results(out, names, status: dict | None = None) -> dict:
    """Name -> the metrics of ``out/<name>/summary.json`` plus ``seconds_per_step``, ``delta_f_error``
    and ``status`` (from ``status``, else ``done`` / ``missing``)."""
    res = {}
    for name in names:
        path = Path(out) / name / "summary.json"
        st = (status or {}).get(name, {}).get("status")
        if not path.exists():
            res[name] = {"status": st or "missing"}
            continue
        m = json.loads(path.read_text())
        steps, secs = m.get("steps"), m.get("train_seconds")
        if steps and secs is not None:
            m["seconds_per_step"] = float(secs) / float(steps)
        add_delta_f_error(m)
        m["status"] = st or "done"
        res[name] = m
    return res


def format_ablation(results: dict, title: str) -> str:
    """The ablation table: :func:`~eqflow.comparison.format_comparison` with :data:`ABLATION_ROWS`."""
    from .comparison import format_comparison
    return format_comparison(results, title, rows=ABLATION_ROWS)


def ablation_title(vset: VariantSet, names, budget_minutes: float, extra=()) -> str:
    """Title lines: system, budget, what each column is, the overrides on the command line."""
    lines = [f"ablation '{vset.name}': {vset.description or ''} ({budget_minutes:g} min of training per variant)"]
    for v in vset.select(names):
        lines.append(f"  {v.name}: {v.description} [{Path(v.config).name}{' ' if v.overrides else ''}"
                     f"{' '.join(v.overrides)}]")
    common = [*vset.common, *extra]
    if common:
        lines.append(f"  every variant: {' '.join(common)}")
    return "\n".join(lines)


def ablation_notes(out, results: dict) -> list:
    """Warnings to print under the table: failed variants, and annealing ladders the budget cut short
    (with ``train.schedule_clock: steps`` the rungs follow ``train.steps`` alone)."""
    notes = []
    for name, m in results.items():
        if m.get("status") in ("failed", "missing"):
            notes.append(f"{name}: {m['status']} (see {Path(out) / 'logs' / (name + '.log')})")
            continue
        cfg_path = Path(out) / name / "config.yaml"
        if not cfg_path.exists() or m.get("final_temperature") is None:
            continue
        temps = (yaml.safe_load(cfg_path.read_text()).get("anneal") or {}).get("temperatures")
        final = float(m["final_temperature"])
        if temps and not math.isclose(final, float(temps[-1]), rel_tol=1e-6):
            notes.append(f"{name}: training stopped at T = {final:g} before the ladder's last rung "
                         f"{temps[-1]} (the budget ended first; with train.schedule_clock=steps lower train.steps)")
    return notes
