"""scripts/ablate_modes.py and eqflow.ablation: variant definitions, the run machinery and the table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eqflow.ablation import (VARIANT_SETS, collect_results, format_ablation, load_variant_set, variant_config,
                             variant_state)
from eqflow.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

TINY_DW4 = ["field.hidden=8", "field.n_layers=1", "flow.n_steps=2", "train.steps=2", "train.batch_size=8",
            "train.ml_batch_size=8", "train.checkpoint_every=1", "train.log_every=1", "fm.batch_size=8",
            "buffer.refresh_samples=8", "buffer.capacity=64", "eval.n_samples=40", "eval.batch_size=40",
            "eval.nll_samples=10", "eval.solver_check=4", "eval.n_steps=2"]


def test_alanine_variants_are_valid_configs():
    """Every variant of the default set loads, takes its overrides, validates, and builds its model on the
    real alanine dipeptide target (OpenMM; no training)."""
    from eqflow.builders import build_model, build_target
    vset = load_variant_set("ala2")
    names = [v.name for v in vset.variants]
    assert names == ["rkl", "fm", "fm+anneal", "fm+mixture", "fm+harmonic", "best"]
    cfgs = {v.name: variant_config(vset, v, ["target.kwargs.n_workers=0"], budget_minutes=30) for v in vset.variants}
    for name, cfg in cfgs.items():
        assert cfg.target.name == "ala2_implicit" and cfg.target.kwargs["temperature"] == 300.0, name
        assert cfg.train.budget_minutes == 30 and cfg.train.ml_weight == 0 and cfg.train.fm_data_weight == 0, name
    assert cfgs["rkl"].train.kl_weight == 1 and cfgs["rkl"].train.fm_weight == 0
    assert all(cfgs[n].train.fm_weight > 0 for n in names[1:])
    assert cfgs["fm"].anneal.temperatures is None and cfgs["fm"].flow.base == "gaussian"
    assert cfgs["fm"].flow.n_components == 1
    assert cfgs["fm+anneal"].anneal.temperatures[-1] == 300.0 and cfgs["fm+anneal"].flow.base == "gaussian"
    assert cfgs["fm+mixture"].flow.n_components == 2 and cfgs["fm+mixture"].anneal.temperatures is None
    assert cfgs["fm+harmonic"].flow.base == "harmonic" and cfgs["fm+harmonic"].anneal.temperatures is None
    best = cfgs["best"]
    assert best.flow.base == "harmonic" and best.flow.n_components == 2 and best.anneal.temperatures is not None
    # the same model sections as the variant's base file apart from the overridden keys
    target = build_target(cfgs["rkl"])
    try:
        for name, cfg in cfgs.items():
            torch.manual_seed(0)
            model = build_model(cfg, target)
            x, log_q = model.sample(2, divergence="hutchinson")
            assert x.shape == (2, 22, 3) and torch.isfinite(log_q).all(), name
    finally:
        target.close()


def test_variant_sets_and_files(tmp_path):
    for vset in VARIANT_SETS.values():
        for v in vset.variants:
            variant_config(vset, v)  # valid as shipped
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        VARIANT_SETS["ala2"].select(["nope"])
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"common": ["train.steps=3"], "variants": [
        {"name": "a", "config": "configs/dw4.yaml"},
        {"name": "b", "config": "configs/dw4_fm.yaml", "overrides": ["flow.n_components=3"]}]}))
    vset = load_variant_set(path)
    assert [v.name for v in vset.variants] == ["a", "b"]
    cfg = variant_config(vset, vset.variants[1], ["train.lr=0.01"], budget_minutes=2)
    assert (cfg.train.steps, cfg.flow.n_components, cfg.train.lr, cfg.train.budget_minutes) == (3, 3, 0.01, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"variants": [{"name": "a", "config": "configs/dw4.yaml",
                                                 "overrides": ["flow.nope=1"]}]}))
    with pytest.raises(ConfigError, match="variant 'a'.*flow.nope"):
        variant_config(load_variant_set(bad), load_variant_set(bad).variants[0])


def test_table_from_summaries(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps(
        {"ess": 0.5, "eval_divergence": "hutchinson", "steps": 10, "train_seconds": 20.0, "energy_evaluations": 640,
         "delta_f_reweighted": 4.0, "delta_f_reweighted_std": 0.3, "ref_delta_f": 3.5}))
    assert variant_state(tmp_path / "a") == "done" and variant_state(tmp_path / "b") == "new"
    res = collect_results(tmp_path, ["a", "b"])
    assert res["a"]["seconds_per_step"] == 2.0 and res["a"]["delta_f_error"] == 0.5
    assert res["b"] == {"status": "missing"}
    table = format_ablation(res, "t")
    for label in ("ESS", "divergence of the ESS log q", "hutchinson", "|ΔF error|", "seconds per step", "missing"):
        assert label in table, table


def _dw4_reference(path):
    from eqflow.distributions import save_reference
    from eqflow.geometry import remove_mean
    from eqflow.targets import DoubleWell
    torch.manual_seed(0)
    x = remove_mean(2.0 * torch.randn(50, 4, 2, dtype=torch.float64))
    save_reference(path, x, DoubleWell().energy(x), meta={"system": "dw4", "temperature": 1.0})


def _ablate(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ablate_modes.py"), *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_ablation_end_to_end_dw4(tmp_path):
    """Two DW4 variants, two at a time, 2 steps each: one table from both runs; --resume skips them."""
    ref = tmp_path / "ref.npz"
    _dw4_reference(ref)
    out = tmp_path / "abl"
    common = ["--config-set", "dw4", "--variants", "rkl", "fm", "--budget-minutes", "1", "--out", str(out),
              "--set", *TINY_DW4, f"target.reference={ref}"]
    r = _ablate([*common, "--jobs", "2"])
    assert r.returncode == 0, r.stderr[-3000:] + "".join((out / "logs" / f"{n}.log").read_text()[-2000:]
                                                        for n in ("rkl", "fm") if (out / "logs" / f"{n}.log").exists())
    table = (out / "ablation_table.txt").read_text()
    assert table.strip() in r.stdout
    for label in ("ESS", "divergence of the ESS log q", "exact", "NLL on the reference", "energy W1 reweighted",
                  "energy evaluations in training", "training wall time", "seconds per step", "training steps"):
        assert label in table, table
    res = json.loads((out / "ablation.json").read_text())
    assert set(res) == {"rkl", "fm"}
    for name in ("rkl", "fm"):
        assert res[name]["status"] == "done" and res[name]["steps"] == 2, res[name]
        assert 0 <= res[name]["ess"] <= 1 and res[name]["energy_evaluations"] > 0
        assert json.loads((out / name / "summary.json").read_text())["steps"] == 2
    # fm refreshes its buffer (energy evaluations beyond its reverse-KL batches)
    assert res["fm"]["energy_evaluations"] > res["rkl"]["energy_evaluations"]
    mtime = (out / "rkl" / "checkpoint.pt").stat().st_mtime
    r = _ablate([*common, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished before, skipped" in r.stderr and (out / "rkl" / "checkpoint.pt").stat().st_mtime == mtime
    assert json.loads((out / "ablation.json").read_text())["rkl"]["status"] == "skipped"
    r = _ablate(common)  # neither --resume nor --overwrite: refused in one line, nothing trained
    assert r.returncode != 0 and "already holds a run" in r.stderr and "Traceback" not in r.stderr
