"""Learning-rate schedules: warm-up, cosine end points, and the wall-clock clock (train.schedule_clock)."""
import math

import pytest
import torch

from eqflow.config import ConfigError, apply_overrides, load_config
from eqflow.training.trainer import make_scheduler


def _settings(**kw):
    cfg = load_config("configs/dw4.yaml")
    cfg = apply_overrides(cfg, [f"train.{k}={v}" for k, v in kw.items()])
    return cfg.train


def _lr_after(settings, n_steps, clock=None):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=settings.lr)
    sched = make_scheduler(opt, settings, clock=clock)
    for _ in range(n_steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_cosine_end_points():
    t = _settings(steps=100, warmup_steps=0, lr=1e-3, lr_final=1e-5, lr_schedule="cosine")
    assert _lr_after(t, 0) == pytest.approx(1e-3)
    assert _lr_after(t, 50) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert _lr_after(t, 100) == pytest.approx(1e-5)


def test_time_clock_reaches_the_floor_when_the_budget_ends():
    t = _settings(steps=1000, warmup_steps=0, lr=1e-3, lr_final=1e-5, lr_schedule="cosine",
                  budget_minutes=1, schedule_clock="time")
    seconds = {"s": 0.0}
    clock = lambda: seconds["s"]  # noqa: E731
    seconds["s"] = 30.0  # half the budget after 10 of 1000 steps: the clock decides
    assert _lr_after(t, 10, clock) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    seconds["s"] = 60.0
    assert _lr_after(t, 10, clock) == pytest.approx(1e-5)
    seconds["s"] = 0.0  # a fast machine: the step count is ahead, it decides
    assert _lr_after(t, 1000, clock) == pytest.approx(1e-5)


def test_time_clock_needs_a_budget():
    with pytest.raises(ConfigError, match="schedule_clock"):
        apply_overrides(load_config("configs/dw4.yaml"), ["train.schedule_clock=time", "train.budget_minutes=null"])
    with pytest.raises(ConfigError, match="schedule_clock"):
        apply_overrides(load_config("configs/dw4.yaml"), ["train.schedule_clock=wall"])


def test_time_clock_moves_the_annealing_rungs(tmp_path):
    """With schedule_clock: time the ladder reads the budget's elapsed share of train.steps."""
    from eqflow.builders import build_flow, build_target
    from eqflow.config import AnnealConfig
    from eqflow.fault_check import tiny_config
    from eqflow.training import Trainer

    cfg = tiny_config(steps=100, budget_minutes=1, schedule_clock="time")
    target = build_target(cfg)
    torch.manual_seed(0)
    tr = Trainer(build_flow(cfg, target), target, cfg.train, out_dir=tmp_path, progress=False,
                 anneal_settings=AnnealConfig(temperatures=[4.0, 2.0, 1.0], fractions=[0.25, 0.25]))
    assert tr._schedule_step() == 0 and tr.energy.temperature == 4.0
    tr._clock_seconds = 20.0  # a third of the budget, 0 steps made: the second rung
    assert tr._schedule_step() == 33
    assert tr.ladder.temperature_at(tr._schedule_step()) == 2.0
    tr._clock_seconds = 60.0
    assert tr.ladder.temperature_at(tr._schedule_step()) == 1.0


def test_renyi_order_switches_at_its_share_of_training(tmp_path):
    """train.kl_alpha applies from train.kl_alpha_from on (steps, or the budget with a time clock);
    the trainer logs the order it used."""
    import json

    from eqflow.builders import build_flow, build_target
    from eqflow.fault_check import tiny_config
    from eqflow.training import Trainer

    from eqflow.config import apply_overrides

    def exact(c):
        return apply_overrides(c, ["flow.divergence=exact"])

    cfg = exact(tiny_config(steps=4, log_every=1))
    cfg = apply_overrides(cfg, ["train.kl_alpha=0.25", "train.kl_alpha_from=0.5"])
    target = build_target(cfg)
    torch.manual_seed(0)
    tr = Trainer(build_flow(cfg, target), target, cfg.train, out_dir=tmp_path, progress=False)
    tr.train()
    rows = [json.loads(line) for line in open(tr.metrics_path)]
    assert [r["kl_alpha"] for r in rows] == [1.0, 1.0, 0.25, 0.25]

    cfg = apply_overrides(exact(tiny_config(steps=100, budget_minutes=1, schedule_clock="time")),
                          ["train.kl_alpha=0", "train.kl_alpha_from=0.5"])
    tr = Trainer(build_flow(cfg, target), target, cfg.train, out_dir=tmp_path / "time", progress=False)
    assert tr.kl_alpha() == 1.0
    tr._clock_seconds = 31.0  # past half the budget at step 0: the clock decides
    assert tr.kl_alpha() == 0.0
