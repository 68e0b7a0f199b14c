"""Learning-rate schedules: warm-up, cosine end points, and the wall-clock clock (train.lr_clock)."""
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
                  budget_minutes=1, lr_clock="time")
    seconds = {"s": 0.0}
    clock = lambda: seconds["s"]  # noqa: E731
    seconds["s"] = 30.0  # half the budget after 10 of 1000 steps: the clock decides
    assert _lr_after(t, 10, clock) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    seconds["s"] = 60.0
    assert _lr_after(t, 10, clock) == pytest.approx(1e-5)
    seconds["s"] = 0.0  # a fast machine: the step count is ahead, it decides
    assert _lr_after(t, 1000, clock) == pytest.approx(1e-5)


def test_time_clock_needs_a_budget():
    with pytest.raises(ConfigError, match="lr_clock"):
        apply_overrides(load_config("configs/dw4.yaml"), ["train.lr_clock=time", "train.budget_minutes=null"])
    with pytest.raises(ConfigError, match="lr_clock"):
        apply_overrides(load_config("configs/dw4.yaml"), ["train.lr_clock=wall"])
