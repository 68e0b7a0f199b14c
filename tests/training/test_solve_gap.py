"""train.solve_check_every: the training solve against twice its steps, on the same base points and probe."""
import json
import warnings

import pytest
import torch

from eqflow.config import ConfigError, apply_overrides, load_config
from eqflow.fault_check import tiny_config, tiny_trainer
from eqflow.training import training_solve_gap


def _flow(n_steps, divergence="hutchinson"):
    from eqflow.builders import build_flow, build_target
    cfg = apply_overrides(tiny_config(), [f"flow.n_steps={n_steps}", f"flow.divergence={divergence}",
                                          "field.coord_gain=3.0"])
    torch.manual_seed(0)
    return build_flow(cfg, build_target(cfg))


def test_gap_is_discretization_error_only():
    """With a shared probe the gap shrinks fast with the steps (rk4); the Hutchinson noise between two
    probes on the same points is orders of magnitude larger, and the check does not see it."""
    flow = _flow(1)
    for p in flow.field.parameters():  # a field that is not near the identity map
        torch.nn.init.normal_(p, std=0.5)
    settings = flow.solver_settings
    gaps = []
    for k in (1, 4, 16):
        with flow.using_solver(settings.__class__("rk4", k)):
            gaps.append(training_solve_gap(flow, 64, seed=3)["solve_gap"])
    assert gaps[1] < gaps[0] / 5 and gaps[2] < gaps[1] / 10  # measured: 1.25, 0.10, 0.0034 nats
    with flow.using_solver(settings.__class__("rk4", 16)), torch.no_grad():
        x, _ = flow.sample(64)
        torch.manual_seed(1)
        a = flow.log_prob(x)
        torch.manual_seed(2)
        b = flow.log_prob(x)
    assert (a - b).abs().mean() > 100 * gaps[2]
    rng = torch.get_rng_state()
    training_solve_gap(flow, 8, seed=0)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched


def test_exact_divergence_gap_matches_between_modes_on_a_converged_solve():
    flow = _flow(32, divergence="exact")
    g = training_solve_gap(flow, 32, seed=0)
    assert 0 <= g["solve_gap"] <= g["solve_gap_max"] < 1e-4


def test_models_without_a_solve_return_nothing():
    class NoODE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
    assert training_solve_gap(NoODE(), 4) == {}
    with pytest.raises(ValueError, match="n >= 1"):
        training_solve_gap(_flow(2), 0)


def test_trainer_logs_the_gap_warns_once_and_leaves_training_unchanged(tmp_path):
    plain = tiny_trainer(tiny_config(steps=4), tmp_path / "plain")
    plain.train()
    cfg = apply_overrides(tiny_config(steps=4), ["train.solve_check_every=2", "train.solve_check_samples=16",
                                                 "train.solve_check_warn=1e-9"])
    checked = tiny_trainer(cfg, tmp_path / "checked")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked.train()
    rows = [json.loads(line) for line in open(checked.metrics_path)]
    assert [r["step"] for r in rows if "solve_gap" in r] == [2, 4]
    assert all(r["solve_gap"] > 0 and r["solve_gap_max"] >= r["solve_gap"] for r in rows if "solve_gap" in r)
    assert sum("exploiting the solver" in str(w.message) for w in caught) == 1
    losses = [json.loads(line)["loss"] for line in open(plain.metrics_path)]
    assert [r["loss"] for r in rows] == losses  # the check draws from its own RNG stream


@pytest.mark.parametrize("override", ["train.solve_check_every=-1", "train.solve_check_every=1.5",
                                      "train.solve_check_warn=0"])
def test_config_refuses_bad_values(override):
    with pytest.raises(ConfigError, match="solve_check"):
        apply_overrides(load_config("configs/dw4.yaml"), [override])


def test_refine_doubles_the_training_solve_up_to_its_cap_and_resume_keeps_it(tmp_path):
    over = ["train.solve_check_every=2", "train.solve_check_samples=8", "train.solve_check_warn=1e-9",
            "train.solve_check_refine=true", "train.solve_check_max_steps=8", "train.checkpoint_every=2"]
    cfg = apply_overrides(tiny_config(steps=6), over)  # TINY trains with rk4 2 steps
    tr = tiny_trainer(cfg, tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = tr.train()
    rows = [json.loads(line) for line in open(tr.metrics_path)]
    assert [(r["step"], r.get("solve_steps")) for r in rows if "solve_gap" in r] == [(2, 4), (4, 8), (6, None)]
    assert tr.model.n_steps == 8 and summary["train_solve_steps"] == 8
    assert summary["train_solve_gap"] == rows[-1]["solve_gap"]  # the last check, in the summary
    assert tr.metadata["config"]["flow"]["n_steps"] == 8  # what load_checkpoint builds the model with
    assert sum("training goes on with" in str(w.message) for w in caught) == 2
    assert sum("exploiting" in str(w.message) for w in caught) == 1  # at the cap: the plain warning, once

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        part = tiny_trainer(apply_overrides(tiny_config(steps=2), over), tmp_path / "part")
        part.train()
        assert part.model.n_steps == 4
        resumed = tiny_trainer(apply_overrides(tiny_config(steps=6), over), tmp_path / "part")
        assert resumed.model.n_steps == 2  # built from the config ...
        resumed.load()
        assert resumed.model.n_steps == 4  # ... and given back the refined solve by the checkpoint
        resumed.train()
    full = [json.loads(line)["loss"] for line in open(tr.metrics_path)]
    assert [json.loads(line)["loss"] for line in open(resumed.metrics_path)] == pytest.approx(full, abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["train.solve_check_refine=true"], "solve_check_every"),
    (["train.solve_check_every=10", "train.solve_check_refine=true", "train.solve_check_max_steps=4"],
     "solve_check_max_steps"),
])
def test_config_refuses_refine_without_its_check_or_below_the_solve(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("configs/lj13.yaml"), overrides if "every" in overrides[0] else
                        ["train.solve_check_every=0", *overrides])


def test_a_run_evaluates_and_exports_the_refined_solve(tmp_path):
    """run_training: with eval.n_steps null the evaluation falls back on the refined training solve, and
    load_checkpoint builds the model with it; the caller's config is left as given."""
    import eqflow
    from eqflow.training import run_training
    cfg = apply_overrides(tiny_config(steps=2), ["train.solve_check_every=2", "train.solve_check_samples=8",
                                                 "train.solve_check_warn=1e-9", "train.solve_check_refine=true",
                                                 "eval.n_steps=null"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = run_training(cfg, tmp_path / "run", progress=False)
    assert summary["train_solve_steps"] == 4 and summary["eval_solver"] == "rk4-4"
    assert cfg.flow.n_steps == 2
    assert eqflow.load_checkpoint(tmp_path / "run").model.n_steps == 4
