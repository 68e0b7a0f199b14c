"""The data-free objectives wired into the Trainer: replay buffer, weighted losses, annealing, resume."""
import json

import numpy as np
import pytest
import torch

from eqflow.builders import build_flow, build_target
from eqflow.config import config_from_dict
from eqflow.training import Trainer, run_training

TINY = {
    "target": {"name": "dw4", "reference": None},
    "field": {"hidden": 8, "n_layers": 2},
    "flow": {"solver": "rk4", "n_steps": 2, "base_scale": 2.0},
    "train": {"steps": 6, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 100, "log_every": 1,
              "lr_schedule": "constant", "kl_weight": 0.0, "fm_weight": 1.0, "dtype": "float64"},
    "fm": {"batch_size": 64, "permute": True},
    "buffer": {"capacity": 1000, "refresh_every": 3, "refresh_samples": 16},
    "eval": {"n_samples": 64, "batch_size": 64, "nll_samples": 0},
}


def cfg_of(**sections):
    d = json.loads(json.dumps(TINY))
    for sec, values in sections.items():
        d.setdefault(sec, {}).update(values)
    return config_from_dict(d)


def make_trainer(cfg, out, **kwargs):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if cfg.train.dtype == "float64" else torch.float32)
    try:
        torch.manual_seed(cfg.train.seed)
        target = build_target(cfg)
        flow = build_flow(cfg, target)
    finally:
        torch.set_default_dtype(old)
    return Trainer(flow, target, cfg.train, out_dir=out, progress=False, overwrite=True, fm_settings=cfg.fm,
                   buffer_settings=cfg.buffer, anneal_settings=cfg.anneal, **kwargs)


def rows(trainer):
    return [json.loads(line) for line in open(trainer.metrics_path)]


def test_buffer_filled_before_first_step_and_refreshed_on_cadence(tmp_path):
    cfg = cfg_of(train={"steps": 7, "kl_weight": 0.5})
    calls = []

    def sample_fn(n):
        calls.append((n, torch.is_grad_enabled()))
        return tr.model.sample(n, divergence="exact")

    tr = make_trainer(cfg, tmp_path, sample_fn=sample_fn)
    assert tr.buffer is not None and len(tr.buffer) == 0
    summary = tr.train()
    # Refreshes before steps 0, 3 and 6 (16 samples each, in one chunk of the batch size), no graph.
    assert calls == [(16, False)] * 3
    assert len(tr.buffer) == 48
    data = tr.buffer.data()
    assert not data["x"].requires_grad and data["x"].grad_fn is None
    logged = rows(tr)
    assert [r["step"] for r in logged if "buffer_ess" in r] == [1, 4, 7]
    for r in logged:
        if "buffer_ess" in r:
            assert 0 < r["buffer_ess"] <= 1 and r["buffer_ess"] == r["buffer_ess_raw"]  # no weight control
            assert 0 < r["buffer_max_weight"] <= 1
    # Every target evaluation counted: 3 refreshes of 16 and 7 reverse-KL batches of 32.
    assert summary["energy_evaluations"] == 48 + 7 * 32 == logged[-1]["energy_evals"]


def test_flow_matching_on_buffer_lowers_the_fm_loss(tmp_path):
    cfg = cfg_of(train={"steps": 30, "dtype": "float32"}, buffer={"refresh_every": 10, "refresh_samples": 64})
    tr = make_trainer(cfg, tmp_path)
    tr.train()
    fm = [r["fm"] for r in rows(tr)]
    assert len(fm) == 30 and all(np.isfinite(fm))
    assert np.mean(fm[-8:]) < np.mean(fm[:8]) - 0.1


def test_weighted_objectives_with_a_mixture_flow(tmp_path):
    # Uniform draws weighed by their importance weights; components passed to the field for FM.
    cfg = cfg_of(train={"steps": 3, "iwml_weight": 0.1}, flow={"n_components": 2, "base_scale": [1.5, 2.5]},
                 buffer={"resample": False, "clip_quantile": 0.9, "tempering": 0.5})
    tr = make_trainer(cfg, tmp_path)
    tr.train()
    r = rows(tr)
    assert all(np.isfinite(x["fm"]) and np.isfinite(x["iwml"]) for x in r)
    assert r[0]["buffer_ess"] >= r[0]["buffer_ess_raw"]  # clipping and tempering raise the ESS


def test_annealing_endpoints_and_exact_buffer_reweighting(tmp_path):
    cfg = cfg_of(train={"steps": 10}, buffer={"refresh_every": 100},
                 anneal={"temperatures": [4.0, 2.0, 1.0], "steps_per_rung": 3})
    tr = make_trainer(cfg, tmp_path)
    assert tr.energy.temperature == 4.0 and tr.buffer.temperature == 4.0
    tr.train()
    logged = rows(tr)
    assert logged[0]["temperature"] == 4.0 and logged[-1]["temperature"] == 1.0
    assert [r["step"] for r in logged if r.get("rung_change")] == [4, 7]
    assert tr.energy.temperature == 1.0 and tr.buffer.temperature == 1.0
    # Filled once at T = 4, then only rescaled: the stored energies are the target's own, exactly.
    data = tr.buffer.data()
    assert torch.allclose(data["u"], tr.target.energy(data["x"]), rtol=1e-12, atol=1e-12)


def test_annealing_by_fractions_follows_the_step_budget(tmp_path):
    cfg = cfg_of(train={"steps": 4}, anneal={"temperatures": [3.0, 1.0], "fractions": [0.5]})
    tr = make_trainer(cfg, tmp_path)
    tr.train()
    assert [r["temperature"] for r in rows(tr)] == [3.0, 3.0, 1.0, 1.0]


def test_ladder_must_end_at_the_target_temperature(tmp_path):
    with pytest.raises(ValueError, match="last rung must be the target"):
        make_trainer(cfg_of(anneal={"temperatures": [3.0, 2.0], "fractions": [0.5]}), tmp_path)


def _resume_cfg(steps):
    return cfg_of(train={"steps": steps, "kl_weight": 0.3, "iwml_weight": 0.1, "checkpoint_every": 100},
                  buffer={"capacity": 40, "refresh_every": 3, "refresh_samples": 16},
                  anneal={"temperatures": [2.0, 1.0], "steps_per_rung": 4})


def test_resume_with_buffer_continues_exactly(tmp_path):
    full = make_trainer(_resume_cfg(8), tmp_path / "full")
    full.train()
    ref = [r["loss"] for r in rows(full)]

    part = make_trainer(_resume_cfg(5), tmp_path / "part")
    part.train()
    resumed = make_trainer(_resume_cfg(8), tmp_path / "part")
    resumed.load()
    assert resumed.step == 5 and len(resumed.buffer) == 32 and resumed.energy.temperature == 1.0
    resumed.train()
    assert np.allclose([r["loss"] for r in rows(resumed)], ref, rtol=0, atol=1e-6)
    a, b = full.buffer.state_dict(), resumed.buffer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in ("x", "log_q", "u")) and a["ptr"] == b["ptr"]
    assert resumed.n_energy_evals == full.n_energy_evals
    from eqflow.errors import RunFolderError
    other = make_trainer(cfg_of(buffer={"capacity": 41}), tmp_path / "part")
    with pytest.raises(RunFolderError, match="buffer.capacity is 41"):
        other.load()


def test_step_cut_short_during_refresh_leaves_buffer_as_at_its_start(tmp_path):
    full = make_trainer(_resume_cfg(8), tmp_path / "full")
    full.train()
    ref = [r["loss"] for r in rows(full)]

    cut = make_trainer(_resume_cfg(8), tmp_path / "cut")
    compute = cut.compute_loss

    def interrupt_at_step_6():  # after the refresh (step 6) and the rung change (step 4) happened
        if cut.step == 6:
            raise KeyboardInterrupt
        return compute()

    cut.compute_loss = interrupt_at_step_6
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = make_trainer(_resume_cfg(8), tmp_path / "cut")
    resumed.load()
    assert resumed.step == 6 and len(resumed.buffer) == 32  # the refresh of step 6 undone
    resumed.train()
    assert np.allclose([r["loss"] for r in rows(resumed)], ref, rtol=0, atol=1e-6)


def test_mode_diagnostics_logged_and_plotted(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["train"].update(steps=4, checkpoint_every=2)
    d["buffer"].update(refresh_every=2)
    summary = run_training(config_from_dict(d), tmp_path, progress=False, evaluate=False)
    assert summary["energy_evaluations"] == 2 * 16
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    refreshes = [r for r in logged if "buffer_ess" in r]
    assert len(refreshes) == 2
    for r in refreshes:
        raw = [v for k, v in r.items() if k.startswith("pop_raw/")]
        rw = [v for k, v in r.items() if k.startswith("pop_rw/")]
        assert len(raw) == len(rw) == 6  # the five DW4 minima and "other"
        assert abs(sum(raw) - 1) < 1e-9 and abs(sum(rw) - 1) < 1e-9
        assert np.isfinite(r["refresh_energy_mean"]) and r["refresh_energy_min"] <= r["refresh_energy_mean"]
    assert (tmp_path / "modes.png").exists() and (tmp_path / "training_curves.png").exists()


def test_warns_when_the_budget_ends_before_the_target_temperature(tmp_path):
    cfg = cfg_of(train={"steps": 10, "budget_minutes": 1e-9}, anneal={"temperatures": [3.0, 1.0], "fractions": [0.5]})
    tr = make_trainer(cfg, tmp_path)
    with pytest.warns(RuntimeWarning, match="before the annealing ladder reached the target temperature 1.0"):
        summary = tr.train()
    assert summary["stop_reason"] == "budget" and summary["final_temperature"] == 3.0


def test_flow_matching_on_reference_data_lowers_its_nll(tmp_path):
    from eqflow.distributions import ReferenceData
    from eqflow.geometry import remove_mean
    g = torch.Generator().manual_seed(0)
    square = torch.tensor([[0.0, 0.0], [3.5, 0.0], [3.5, 3.5], [0.0, 3.5]], dtype=torch.float64)
    angles = torch.rand(600, generator=g, dtype=torch.float64) * 2 * np.pi
    c, s = angles.cos(), angles.sin()
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [600, 2, 2]
    x = remove_mean(square @ rot.transpose(-1, -2) + 0.15 * torch.randn(600, 4, 2, generator=g, dtype=torch.float64))
    data = ReferenceData(x, torch.zeros(600))
    cfg = cfg_of(train={"steps": 60, "fm_weight": 0.0, "fm_data_weight": 1.0}, fm={"permute": False},
                 target={"reference": "given below"})
    tr = make_trainer(cfg, tmp_path, train_data=data.subset(slice(0, 500)))
    held_out = data.positions[500:564]
    with torch.no_grad():
        before = -tr.model.log_prob(held_out, divergence="exact").mean()
    tr.train()
    with torch.no_grad():
        after = -tr.model.log_prob(held_out, divergence="exact").mean()
    fm = [r["fm_data"] for r in rows(tr)]
    assert np.mean(fm[-10:]) < np.mean(fm[:10])
    assert after < before - 1.0


def _mcmc_cfg(steps, **buffer):
    return cfg_of(train={"steps": steps, "kl_weight": 0.3, "iwml_weight": 0.1, "checkpoint_every": 100},
                  buffer={"capacity": 40, "refresh_every": 3, "refresh_samples": 16, "tempering": 0.0,
                          "mcmc_steps": 20, "mcmc_step_size": 0.05, "mcmc_max_drift": 0.5, **buffer})


def test_mala_refined_buffer_lowers_the_energy_and_resumes_exactly(tmp_path):
    from eqflow.training.trainer import Trainer

    seen = {}
    original = Trainer._refine

    def spy(self, x, u):  # the model's samples, before the moves
        out = original(self, x, u)
        seen.setdefault("pairs", []).append((x.clone(), u.clone(), out[0], out[2], out[1]))
        return out

    Trainer._refine = spy
    try:
        full = make_trainer(_mcmc_cfg(8, capacity=100), tmp_path / "full")
        full.train()
    finally:
        Trainer._refine = original
    x0, u0, x1, u1, log_q1 = seen["pairs"][0]
    assert u1.median() < u0.median()  # the moves relax the untrained flow's samples
    assert torch.allclose(u1, full.energy.energy(x1))  # the buffer's energies are the moved states'
    data = full.buffer.data()
    assert torch.equal(data["x"][:16], x1) and x1.sum(1).abs().max() < 1e-9  # stored, CoM-free
    assert torch.equal(data["log_q"][:16], log_q1) and torch.isfinite(log_q1).all()  # re-scored at the moved states
    logged = [r for r in rows(full) if "mcmc_acceptance" in r]
    assert len(logged) == 3 and all(0 < r["mcmc_acceptance"] <= 1 and r["mcmc_step_size"] > 0 for r in logged)
    assert all(r["mcmc_energy_after"] < r["mcmc_energy_before"] for r in logged)
    assert all(r["buffer_ess"] == pytest.approx(1.0) for r in logged if "buffer_ess" in r)  # tempering 0: uniform
    # Resume: the adapted step size is part of the checkpoint, so the run continues exactly.
    ref = [r["loss"] for r in rows(full)]
    part = make_trainer(_mcmc_cfg(5, capacity=100), tmp_path / "part")
    part.train()
    resumed = make_trainer(_mcmc_cfg(8, capacity=100), tmp_path / "part")
    resumed.load()
    assert resumed.mcmc_step_size == part.mcmc_step_size != 0.05
    resumed.train()
    assert np.allclose([r["loss"] for r in rows(resumed)], ref, rtol=0, atol=1e-6)
    assert resumed.mcmc_step_size == full.mcmc_step_size


def test_mala_refinement_config_is_checked():
    from eqflow.config import ConfigError
    with pytest.raises(ConfigError, match="buffer.tempering': 0"):
        cfg_of(buffer={"mcmc_steps": 5})
    with pytest.raises(ConfigError, match="buffer.mcmc_step_size"):
        cfg_of(buffer={"mcmc_steps": 5, "tempering": 0.0, "mcmc_step_size": 0.0})
    with pytest.raises(ConfigError, match="buffer.mcmc_max_drift"):
        cfg_of(buffer={"mcmc_max_drift": -1.0})
    with pytest.raises(ConfigError, match="buffer.mcmc_steps"):
        cfg_of(buffer={"mcmc_steps": -1})
