"""Shipped models (pretrained/): export a run, load it on its own, check it against its summary."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eqflow
from eqflow.checkpoint import read_checkpoint
from eqflow.config import apply_overrides, load_config
from eqflow.pretrained import check_pretrained, compare_with_summary, export_pretrained, list_pretrained

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = list_pretrained()


def _script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _dw4_reference(path):
    from eqflow.distributions import save_reference
    from eqflow.geometry import remove_mean
    from eqflow.targets import DoubleWell
    torch.manual_seed(0)
    x = remove_mean(2.0 * torch.randn(60, 4, 2, dtype=torch.float64))
    save_reference(path, x, DoubleWell().energy(x), meta={"system": "dw4", "temperature": 1.0})


@pytest.fixture(scope="module")
def dw4_run(tmp_path_factory):
    """configs/dw4_fm.yaml (replay buffer in the checkpoint) trained for 2 steps and evaluated."""
    from eqflow.training import run_training
    tmp = tmp_path_factory.mktemp("dw4")
    ref = tmp / "ref.npz"
    _dw4_reference(ref)
    cfg = apply_overrides(load_config(ROOT / "configs" / "dw4_fm.yaml"), [
        f"target.reference={ref}", "train.steps=2", "train.batch_size=16", "fm.batch_size=16",
        "buffer.refresh_samples=32", "eval.n_samples=400", "eval.batch_size=400", "eval.nll_samples=20",
        "eval.solver_check=4", "eval.n_steps=8"])
    run_training(cfg, tmp / "run", progress=False)
    return tmp / "run", ref


def test_export_load_sample_equal(dw4_run, tmp_path):
    run, ref = dw4_run
    cmd = ".venv/bin/python scripts/train_eq.py --config configs/dw4_fm.yaml --set train.steps=2"
    r = _script("export_pretrained.py", run, "--name", "dw4", "--dest", tmp_path, "--command", cmd)
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "dw4"
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "checkpoint.pt", "config.yaml", "summary.json"]
    assert cmd in (dest / "README.md").read_text() and 'eqflow.load_checkpoint("pretrained/dw4")' in \
        (dest / "README.md").read_text()
    assert json.loads((dest / "summary.json").read_text()) == json.loads((run / "summary.json").read_text())
    assert load_config(dest / "config.yaml") == load_config(run / "config.yaml")
    small = read_checkpoint(dest / "checkpoint.pt")
    assert {"optimizer", "scheduler", "buffer", "ladder"}.isdisjoint(small) and small["step"] == 2
    full_size, small_size = (run / "checkpoint.pt").stat().st_size, (dest / "checkpoint.pt").stat().st_size
    assert small_size < 0.4 * full_size  # Adam keeps two more copies of the weights, (small_size, full_size)
    # the reference is for evaluation only: loading and sampling work without it
    moved = ref.with_suffix(".hidden")
    ref.rename(moved)
    try:
        gens = [eqflow.load_checkpoint(run), eqflow.load_checkpoint(dest), eqflow.load_checkpoint(dest / "checkpoint.pt")]
        outs = []
        for gen in gens:
            torch.manual_seed(3)
            outs.append(gen.sample(16))
        for x, log_q in outs[1:]:
            assert torch.equal(x, outs[0][0]) and torch.equal(log_q, outs[0][1])
        assert torch.equal(gens[1].log_prob(outs[0][0]), gens[0].log_prob(outs[0][0]))
    finally:
        moved.rename(ref)
    r = _script("export_pretrained.py", run, "--name", "dw4", "--dest", tmp_path)
    assert r.returncode == 2 and "already holds a model" in r.stderr


def test_check_pretrained_reproduces_summary(dw4_run, tmp_path):
    run, ref = dw4_run
    dest = export_pretrained(run, tmp_path / "dw4")
    rows, fresh = check_pretrained(dest)
    assert fresh["n_samples"] == 400 and fresh["eval_divergence"] == "exact"
    verdicts = {k: v for k, *_, v in rows}
    assert {"ess", "nll", "energy_w1_raw", "energy_w1_reweighted"} <= set(verdicts), rows
    assert all(v == "ok" for v in verdicts.values()), rows
    r = _script("check_pretrained.py", dest, "--seed", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ess" in r.stdout and "DIFFERS" not in r.stdout
    # a changed model no longer reproduces its summary
    summary = json.loads((dest / "summary.json").read_text())
    bad = dict(summary, ess=summary["ess"] + 0.5, nll=summary["nll"] + 10.0, pareto_k=0.2, ess_split_min=0.5,
               ess_split_max=0.55)
    verdicts = {k: v for k, *_, v in compare_with_summary(bad, fresh)}
    assert verdicts["ess"].startswith("DIFFERS") and verdicts["nll"] == "DIFFERS"
    heavy = {k: v for k, *_, v in compare_with_summary(bad, dict(fresh, pareto_k=0.9))}
    assert "heavy-tailed weights, Pareto k 0.90" in heavy["ess"] and heavy["nll"] == "DIFFERS"
    light = {k: v for k, *_, v in compare_with_summary(bad, dict(fresh, pareto_k=0.2, ess_split_min=0.5,
                                                                  ess_split_max=0.55))}
    assert light["ess"] == "DIFFERS"
    outlier = {k: v for k, *_, v in compare_with_summary(bad, dict(fresh, pareto_k=0.4, ess_split_min=0.03,
                                                                    ess_split_max=0.76))}
    assert "fifths of a draw 0.03-0.76" in outlier["ess"]
    other = {k: v for k, *_, v in compare_with_summary(summary, dict(fresh, eval_divergence="hutchinson"))}
    assert other["ess"].startswith("not compared") and other["energy_w1_raw"] == "ok"


@pytest.mark.skipif(not SHIPPED, reason="pretrained/ holds no models yet")
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_loads_and_samples(folder):
    """The contract of every shipped model: its files are there, small, and it loads and samples on a fresh clone."""
    for name in ("checkpoint.pt", "config.yaml", "summary.json", "README.md"):
        assert (folder / name).is_file(), f"{folder}/{name} missing"
    assert (folder / "checkpoint.pt").stat().st_size < 20 * 2 ** 20
    state = read_checkpoint(folder / "checkpoint.pt")
    assert "optimizer" not in state and "buffer" not in state
    cfg = load_config(folder / "config.yaml")
    gen = eqflow.load_checkpoint(folder, target=None)
    try:
        assert gen.config == cfg
        torch.manual_seed(0)
        x, log_q = gen.sample(4, divergence="hutchinson")
        assert x.shape == (4, gen.model.n_atoms, gen.model.dim) and torch.isfinite(log_q).all()
        assert torch.isfinite(gen.target.energy(x)).all()
    finally:
        close = getattr(gen.target, "close", None)
        if callable(close):
            close()
