import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from eqflow import Generator, load_checkpoint
from eqflow.checkpoint import read_checkpoint
from eqflow.builders import build_flow, build_target
from eqflow.config import config_from_dict, config_to_dict
from eqflow.training import Trainer, reverse_kl_loss, run_training, save_checkpoint_atomic

TINY = {
    "target": {"name": "dw4", "reference": None},
    "field": {"hidden": 8, "n_layers": 2},
    "flow": {"solver": "rk4", "n_steps": 2, "base_scale": 2.0},
    "train": {"steps": 6, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 3, "log_every": 1,
              "lr_schedule": "constant"},
    "eval": {"n_samples": 64, "batch_size": 64, "nll_samples": 0},
}


def tiny_cfg(**train):
    d = json.loads(json.dumps(TINY))
    d["train"].update(train)
    return config_from_dict(d)


def make_trainer(cfg, out):
    torch.manual_seed(cfg.train.seed)
    target = build_target(cfg)
    return Trainer(build_flow(cfg, target), target, cfg.train, out_dir=out, energy_cut=cfg.target.energy_cut,
                   metadata={"config": config_to_dict(cfg)}, progress=False)


def losses(path):
    return [json.loads(line)["loss"] for line in open(path)]


def test_resume_continues_identically(tmp_path):
    full = make_trainer(tiny_cfg(), tmp_path / "full")
    full.train()
    ref = losses(full.metrics_path)

    part = make_trainer(tiny_cfg(steps=3), tmp_path / "part")
    part.train()
    resumed = make_trainer(tiny_cfg(), tmp_path / "part")
    resumed.load()
    assert resumed.step == 3
    resumed.train()
    assert np.allclose(losses(resumed.metrics_path), ref, rtol=0, atol=1e-6)


def test_checkpoint_round_trip_and_generator(tmp_path):
    tr = make_trainer(tiny_cfg(steps=2), tmp_path)
    tr.train()
    gen = load_checkpoint(tmp_path)
    assert gen.target.n_atoms == 4
    for a, b in zip(gen.flow.state_dict().values(), tr.model.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    x, log_q = gen.sample(16, divergence="exact")
    assert x.shape == (16, 4, 2) and log_q.shape == (16,)
    assert torch.allclose(gen.log_prob(x, divergence="exact"), log_q, atol=2e-2)


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint_atomic({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint_atomic({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_killed_run_leaves_loadable_checkpoint(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    import yaml
    d = json.loads(json.dumps(TINY))
    d["train"].update(steps=100000, checkpoint_every=1)
    cfg_path.write_text(yaml.safe_dump(d))
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["train_eq.py", "--config", r"{cfg_path}", "--out", r"{tmp_path / 'run'}", "--no-progress"]
        exec(open("scripts/train_eq.py").read())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    ck = tmp_path / "run" / "checkpoint.pt"
    import time
    t0 = time.time()
    try:
        while time.time() - t0 < 120 and not (ck.exists() and read_checkpoint(ck)["step"] >= 3):
            time.sleep(0.5)
    finally:  # a failing poll must not leave the training process running (it trains 100,000 steps)
        proc.kill()
        proc.wait()
    gen = load_checkpoint(ck)
    state = read_checkpoint(ck)
    assert state["step"] >= 3
    x, _ = gen.sample(4, with_log_prob=False)
    assert torch.isfinite(x).all()


def test_reverse_kl_training_lowers_the_loss(tmp_path):
    cfg = tiny_cfg(steps=40, lr=5e-3, batch_size=64)
    tr = make_trainer(cfg, tmp_path)
    torch.manual_seed(123)
    before = np.mean([float(reverse_kl_loss(tr.model, tr.target, 256)[0].detach()) for _ in range(2)])
    tr.train()
    torch.manual_seed(123)
    after = np.mean([float(reverse_kl_loss(tr.model, tr.target, 256)[0].detach()) for _ in range(2)])
    assert after < before - 1.0


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    tr = make_trainer(tiny_cfg(steps=12), tmp_path)
    tr.compute_loss = lambda: (torch.tensor(float("nan"), requires_grad=True), {})
    before = [p.detach().clone() for p in tr.model.parameters()]
    with pytest.warns(RuntimeWarning, match="10 of 10 training steps were skipped") as record:
        summary = tr.train()
    assert len([w for w in record if "skipped" in str(w.message)]) == 1  # one warning, not one per step
    assert tr.n_skipped == 12 and summary["skipped_steps"] == 12
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_run_training_writes_run_folder(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["target"]["reference"] = "auto"
    d["target"]["reference_cache"] = str(tmp_path / "cache")
    d["eval"].update(nll_samples=32)
    cfg = config_from_dict(d)
    # A small reference instead of the default-size MCMC run.
    from eqflow.distributions import ensure_particle_reference
    ensure_particle_reference("dw4", cache_dir=tmp_path / "cache", n_samples=500, chains=50, progress=False,
                              burn_in=500)
    summary = run_training(cfg, tmp_path / "run", progress=False)
    for name in ["config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json", "training_curves.png",
                 "energy_hist.png", "distance_hist.png"]:
        assert (tmp_path / "run" / name).exists(), name
    for key in ["ess", "energy_w1_raw", "energy_w1_reweighted", "nll", "distance_tv_reweighted"]:
        assert np.isfinite(summary[key]), key


def test_maximum_likelihood_lowers_held_out_nll(tmp_path):
    from eqflow.distributions import ensure_particle_reference
    d = json.loads(json.dumps(TINY))
    d["target"].update(reference="auto", reference_cache=str(tmp_path / "cache"))
    d["train"].update(kl_weight=0.0, ml_weight=1.0, ml_batch_size=64, steps=30, lr=1e-2)
    d["eval"].update(val_every=15, val_samples=100, divergence="exact")
    cfg = config_from_dict(d)
    ensure_particle_reference("dw4", cache_dir=tmp_path / "cache", n_samples=500, chains=50, progress=False,
                              burn_in=500)
    run_training(cfg, tmp_path / "run", progress=False, evaluate=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    val = [r["val_nll"] for r in rows if "val_nll" in r]
    assert len(val) == 3 and val[-1] < val[0] - 0.5


def test_molecular_run_writes_ramachandran(tmp_path):
    d = {
        "target": {"name": "ala2_vacuum", "kwargs": {"n_workers": 0}, "reference": None},
        "field": {"hidden": 8, "n_layers": 1, "length_scale": 0.1},
        "flow": {"solver": "euler", "n_steps": 1, "base_scale": 0.15},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 1},
        "eval": {"n_samples": 16, "batch_size": 16, "divergence": "hutchinson", "nll_samples": 0},
    }
    summary = run_training(config_from_dict(d), tmp_path, progress=False)
    assert (tmp_path / "ramachandran.png").exists()
    assert 0.0 <= summary["d_fraction"] <= 1.0
    assert abs(summary["pop_phi>0_raw"] + summary["pop_phi<0_raw"] - 1.0) < 1e-9
    # the energy by kind of force: an untrained flow's bonds are far off
    assert summary["u_median_HarmonicBondForce_raw"] > 100.0 and "u_median_NonbondedForce_raw" in summary


def test_regularized_reverse_kl_adds_transport_cost(tmp_path):
    cfg = tiny_cfg()
    tr = make_trainer(cfg, tmp_path)
    torch.manual_seed(5)
    plain, s0 = reverse_kl_loss(tr.model, tr.target, 64)
    torch.manual_seed(5)
    reg, s1 = reverse_kl_loss(tr.model, tr.target, 64, kinetic_weight=0.5, jacobian_weight=0.25)
    assert "kinetic" not in s0 and s1["kinetic"] > 0 and s1["jacobian"] > 0
    assert s1["kl"] == pytest.approx(s0["kl"], abs=1e-5)  # same seed, same samples
    assert float(reg.detach()) == pytest.approx(s1["kl"] + 0.5 * s1["kinetic"] + 0.25 * s1["jacobian"], rel=1e-5)
    tr = make_trainer(tiny_cfg(steps=2, kinetic_weight=0.1, jacobian_weight=0.1), tmp_path / "run")
    tr.train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all("kinetic" in r and "jacobian" in r for r in rows)


def test_evaluation_solver_and_solver_check(tmp_path):
    from eqflow.config import apply_overrides
    from eqflow.evaluation.report import solver_check
    make_trainer(tiny_cfg(steps=2), tmp_path).train()
    gen = load_checkpoint(tmp_path)
    assert gen.solver_settings().n_steps == 2  # eval.n_steps null: the training solver
    gen = Generator(gen.model, gen.target, apply_overrides(gen.config, ["eval.n_steps=16"]))
    s = gen.solver_settings(refine=2)
    assert s.solver == "rk4" and s.n_steps == 32 and s.label == "rk4-32"
    torch.manual_seed(0)
    x, log_q = gen.sample(32, divergence="exact")
    assert gen.flow.n_steps == 2  # restored after sampling
    check = solver_check(gen, 32)
    assert check["logq_solver_mae"] < 1e-3 and check["logq_solver_max"] >= check["logq_solver_mae"]


def test_budget_is_a_cap(tmp_path):
    # 2 s of budget: the loop stops before a step that would end past it.
    tr = make_trainer(tiny_cfg(steps=10_000, budget_minutes=2 / 60, checkpoint_every=10_000), tmp_path)
    out = tr.train()
    assert out["stop_reason"] == "budget" and out["steps"] > 1
    assert tr.elapsed <= 2.0 + 0.5  # one step's timing noise at most
