"""Shipped models: export a training run to a small ``pretrained/<name>/`` folder, and check that a
shipped model still reproduces its summary.

A pretrained folder holds

- ``checkpoint.pt``: the model weights and the config only (format ``eqflow-checkpoint-2``: the
  same verified, safely loaded file as a run's checkpoint, without optimizer, scheduler and replay
  buffer), loadable with :func:`eqflow.load_checkpoint` (the folder or the file);
- ``config.yaml``: the run's full config (``scripts/train_eq.py --config`` retrains it);
- ``summary.json``: the run's summary (training costs and evaluation metrics);
- ``README.md``: what it is, the command that made it, its headline numbers, how to load it.

Loading and sampling need no reference data: ``target.reference`` in the config is only read by
evaluation (:func:`check_pretrained`, ``scripts/evaluate.py``).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import yaml

from .checkpoint import read_checkpoint, save_checkpoint_atomic
from .errors import CheckpointError, EqflowError

__all__ = ["export_pretrained", "check_pretrained", "compare_with_summary", "format_check", "list_pretrained",
           "PRETRAINED_DIR", "CHECKED_METRICS"]

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"

# Training-state entries kept in an exported checkpoint besides the weights (small scalars: the
# costs that comparison tables read); optimizer, scheduler, replay buffer and ladder are dropped.
_KEEP = ("format", "step", "seed", "elapsed", "n_skipped", "n_dropped", "temperature", "n_energy_evals")


def list_pretrained(root=PRETRAINED_DIR) -> list:
    """The model folders under ``root`` (every sub-folder: an incomplete one fails the contract test), by name."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))) \
        if root.is_dir() else []


def export_pretrained(run, dest, command: str | None = None, overwrite: bool = False) -> Path:
    """Write the model of training run ``run`` (folder or ``checkpoint.pt``) to the folder ``dest``.

    ``command`` is the command line that made the run (recorded in README.md). Refuses a ``dest``
    that already holds a model unless ``overwrite``. Returns ``dest``.
    """
    from .training.trainer import check_checkpoint_format

    run = Path(run)
    ck = run / "checkpoint.pt" if run.is_dir() else run
    run_dir = ck.parent
    state = read_checkpoint(ck)
    check_checkpoint_format(state, ck)
    config = (state.get("metadata") or {}).get("config")
    if config is None:
        raise CheckpointError(f"{ck} holds a hand-built model (no config): only config-driven runs can be exported")
    dest = Path(dest)
    if (dest / "checkpoint.pt").exists() and not overwrite:
        raise EqflowError(f"{dest} already holds a model; replace it with --overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    small = {k: state[k] for k in _KEEP if k in state}
    # clone: a state-dict tensor may be a view of a larger storage, which torch.save would write whole
    small["model"] = {k: v.detach().clone().contiguous() if torch.is_tensor(v) else v
                      for k, v in state["model"].items()}
    small["metadata"] = {"config": config, "source": {"run": run_dir.name, "step": state.get("step"),
                                                      "command": command}}
    save_checkpoint_atomic(small, dest / "checkpoint.pt", keep_previous=False)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = None
    if (run_dir / "summary.json").exists():
        shutil.copyfile(run_dir / "summary.json", dest / "summary.json")
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        (dest / "summary.json").unlink(missing_ok=True)
    (dest / "README.md").write_text(_readme(dest, config, state, summary, command))
    return dest


_HEADLINE = (("ess", "ESS"), ("ess_split_min", "ESS, lowest of 5 fifths of the draw"),
             ("ess_split_max", "ESS, highest of 5 fifths"), ("pareto_k", "Pareto k of the weights (>= 0.7: ESS unreliable)"),
             ("eval_divergence", "divergence of log q"), ("n_samples", "samples"),
             ("nll", "NLL on reference (nats)"), ("energy_w1_reweighted", "energy W1 reweighted"),
             ("delta_f_reweighted", "ΔF(phi) reweighted (kT)"), ("ref_delta_f", "ΔF(phi) reference (kT)"),
             ("pop_phi>0_raw", "P(phi>0) raw"), ("rama_kl_reweighted", "Ramachandran KL reweighted"))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _readme(dest: Path, config: dict, state: dict, summary: dict | None, command: str | None) -> str:
    name = dest.name
    tgt = config["target"]
    size = (dest / "checkpoint.pt").stat().st_size
    lines = [f"# pretrained/{name}", "",
             f"Target `{tgt['name']}` ({', '.join(f'{k}={v}' for k, v in (tgt.get('kwargs') or {}).items()) or 'defaults'}); "
             f"{config.get('model', {}).get('kind', 'cartesian')} model, field `{config['field']['kind']}`, "
             f"{int(state.get('step', 0))} training steps in {float(state.get('elapsed', 0.0)) / 60:.1f} min. "
             f"`checkpoint.pt` ({size / 1024:.0f} KiB) holds the weights and the config only.", "",
             "## Made with", "", "```bash", command or "(command not recorded)", "```", "",
             "Retrain from the same config:", "", "```bash",
             f".venv/bin/python scripts/train_eq.py --config pretrained/{name}/config.yaml --out runs/{name}", "```", ""]
    if summary:
        lines += ["## Summary (summary.json)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {_fmt(summary[k])} |" for k, label in _HEADLINE if k in summary]
        lines += ["", f"Check that this model still reproduces them: "
                      f"`.venv/bin/python scripts/check_pretrained.py pretrained/{name}`", ""]
    lines += ["## Use", "", "```python", "import eqflow",
              f'gen = eqflow.load_checkpoint("pretrained/{name}")', "x, log_q = gen.sample(1000)",
              "log_w = -gen.target.energy(x) - log_q      # importance weights to the Boltzmann distribution",
              "```", ""]
    return "\n".join(lines)


HEAVY_TAIL_K = 0.7  # Pareto k of the weights from which one draw's ESS is unreliable (PSIS)
# Lowest / highest ESS of the five fifths of a draw below which a few weights decide its ESS: one
# outlier (DW4, one sample with 3 % of the weight) moves the ESS tenfold but is no tail for Pareto k.
UNSTABLE_FIFTHS = 0.5
# metric -> (absolute tolerance, relative tolerance); ΔF and populations get statistical tolerances
CHECKED_METRICS = {
    "ess": (0.05, 0.25),
    "nll": (0.5, 0.01),
    "energy_w1_raw": (0.05, 0.5),
    "energy_w1_reweighted": (0.1, 0.5),
    "delta_f_reweighted": None,
    "pop_phi>0_raw": None,
    "rama_kl_reweighted": (0.05, 0.5),
    "distance_tv_reweighted": (0.02, 0.5),
}
# metrics that depend on log q: comparable only with the same divergence (exact vs Hutchinson)
_LOGQ_METRICS = {"ess", "nll", "energy_w1_reweighted", "delta_f_reweighted", "rama_kl_reweighted",
                 "distance_tv_reweighted"}


def _tolerance(key: str, old: dict, new: dict, scale: float) -> float:
    a, b = float(old[key]), float(new[key])
    if key == "delta_f_reweighted":  # 3 combined bootstrap errors
        s = math.hypot(float(old.get("delta_f_reweighted_std", 0.0)), float(new.get("delta_f_reweighted_std", 0.0)))
        return scale * (3.0 * s + 0.1)
    if key == "pop_phi>0_raw":  # 3 binomial standard errors of the difference
        p = min(max(0.5 * (a + b), 1e-3), 1 - 1e-3)
        se = math.sqrt(p * (1 - p) * (1.0 / float(old.get("n_samples", 1000)) + 1.0 / float(new.get("n_samples", 1000))))
        return scale * (3.0 * se + 0.005)
    abs_tol, rel_tol = CHECKED_METRICS[key]
    return scale * (abs_tol + rel_tol * max(abs(a), abs(b)))


def compare_with_summary(shipped: dict, fresh: dict, scale: float = 1.0) -> list:
    """Rows ``(metric, shipped, now, |difference|, tolerance, verdict)`` for the metrics of
    :data:`CHECKED_METRICS` present in both; verdict ``ok``, ``DIFFERS`` or ``not compared (...)``
    (log q metrics when the two evaluations used different divergences). ``scale`` multiplies every
    tolerance."""
    same_div = shipped.get("eval_divergence") == fresh.get("eval_divergence")
    rows = []
    for key in CHECKED_METRICS:
        if key not in shipped or key not in fresh:
            continue
        a, b = float(shipped[key]), float(fresh[key])
        if key in _LOGQ_METRICS and not same_div:
            rows.append((key, a, b, abs(a - b), math.nan,
                         f"not compared ({shipped.get('eval_divergence')} vs {fresh.get('eval_divergence')})"))
            continue
        tol = _tolerance(key, shipped, fresh, scale)
        ok = a == b or abs(a - b) <= tol or (math.isnan(a) and math.isnan(b))
        verdict = "ok" if ok else "DIFFERS"
        if not ok and key == "ess":
            k = max([float(d["pareto_k"]) for d in (shipped, fresh)
                     if math.isfinite(float(d.get("pareto_k", math.nan)))], default=math.nan)
            spread = [(float(d["ess_split_min"]), float(d["ess_split_max"])) for d in (shipped, fresh)
                      if "ess_split_min" in d and "ess_split_max" in d]
            unstable = [(lo, hi) for lo, hi in spread if hi > 0 and lo / hi < UNSTABLE_FIFTHS]
            if k >= HEAVY_TAIL_K:
                # the ESS of one draw is decided by its largest weights: two draws may differ by factors
                verdict = f"DIFFERS (heavy-tailed weights, Pareto k {k:.2f}: one draw's ESS is unreliable)"
            elif unstable:
                lo, hi = unstable[0]
                verdict = (f"DIFFERS (ESS of the fifths of a draw {lo:.3g}-{hi:.3g}: a few weights decide "
                           "one draw's ESS)")
        rows.append((key, a, b, abs(a - b), tol, verdict))
    return rows


def format_check(rows: list, title: str) -> str:
    head = ("metric", "shipped", "now", "|diff|", "tolerance", "verdict")
    cells = [head] + [(k, _fmt(a), _fmt(b), _fmt(d), _fmt(t), v) for k, a, b, d, t, v in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = [title] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(2, "-" * len(lines[1]))
    return "\n".join(lines)


def check_pretrained(path, reference=None, n_samples: int | None = None, divergence: str | None = None,
                     device: str = "cpu", seed: int = 0, scale: float = 1.0, target=None):
    """Re-evaluate the shipped model in ``path`` and compare with its ``summary.json``.

    The evaluation uses the summary's own settings unless given: ``n_samples`` (the summary's
    ``n_samples``) and ``divergence`` (its ``eval_divergence``; exact alanine log-densities take hours
    on a CPU core, minutes on a GPU: pass ``device="cuda"`` or ``divergence="hutchinson"``, which leaves
    the log q metrics uncompared). ``reference``: reference file (default the config's
    ``target.reference``). Returns ``(rows, fresh_metrics)``, rows as :func:`compare_with_summary`.
    """
    from .config import apply_overrides
    from .evaluation.report import evaluate_generator
    from .generator import Generator, load_checkpoint
    from .training.run import check_device, resolve_reference

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / "summary.json").exists():
        raise EqflowError(f"{folder} has no summary.json to compare with")
    shipped = json.loads((folder / "summary.json").read_text())
    check_device(device)
    gen = load_checkpoint(path, target=target)
    overrides = [f"eval.divergence={divergence or shipped.get('eval_divergence') or gen.config.eval.divergence}"]
    if reference is not None:
        overrides.append(f"target.reference={reference}")
    cfg = apply_overrides(gen.config, overrides)
    gen = Generator(gen.model.to(device), gen.target, cfg)
    _, test = resolve_reference(cfg, gen.target)
    torch.manual_seed(seed)
    fresh = evaluate_generator(gen, test, n_samples=n_samples or int(shipped.get("n_samples") or cfg.eval.n_samples),
                               plots=False)
    return compare_with_summary(shipped, fresh, scale=scale), fresh
