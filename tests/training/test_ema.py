"""The moving average of the weights (train.ema_decay): its arithmetic, checkpoints and exact resume."""
import json

import numpy as np
import pytest
import torch

from eqflow import load_checkpoint
from eqflow.checkpoint import read_checkpoint
from eqflow.config import ConfigError, config_from_dict
from eqflow.training import ParameterEMA

from test_trainer import TINY, losses, make_trainer, tiny_cfg


def test_average_against_hand_computed_values():
    lin = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    lin.weight.requires_grad_(True)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = ParameterEMA(lin, decay=0.5)
    expected = 1.0
    for k, value in enumerate([3.0, -1.0, 5.0, 2.0]):
        with torch.no_grad():
            lin.weight.fill_(value)
        d = min(0.5, (1 + k) / (10 + k))  # warm-up: 0.1, 0.18.., then 0.25.., then 0.3..
        expected = d * expected + (1 - d) * value
        ema.update(lin)
        assert ema.average["weight"].item() == pytest.approx(expected, abs=1e-14)
    state = ema.model_state_dict(lin)
    assert state["weight"].item() == pytest.approx(expected) and lin.weight.item() == 2.0
    ema.copy_to(lin)
    assert lin.weight.item() == pytest.approx(expected)


def test_frozen_parameters_are_not_averaged():
    lin = torch.nn.Linear(2, 2)
    lin.bias.requires_grad_(False)
    assert ParameterEMA(lin, 0.9).names == ["weight"]


def test_checkpoint_holds_the_average_and_resume_is_exact(tmp_path):
    full = make_trainer(tiny_cfg(ema_decay=0.9), tmp_path / "full")
    full.train()
    state = read_checkpoint(full.checkpoint_path)
    raw, avg = state["train_model"], state["model"]
    assert state["ema"]["n_updates"] == 6
    assert any(not torch.equal(raw[k], avg[k]) for k in raw)
    for k, v in full.model.state_dict().items():  # the trainer's model holds the raw weights...
        assert torch.equal(v, raw[k])
    gen = load_checkpoint(tmp_path / "full")  # ...users get the average
    for k, v in gen.flow.state_dict().items():
        assert torch.equal(v, avg[k])

    part = make_trainer(tiny_cfg(ema_decay=0.9, steps=3), tmp_path / "part")
    part.train()
    resumed = make_trainer(tiny_cfg(ema_decay=0.9), tmp_path / "part")
    resumed.load()
    resumed.train()
    assert np.allclose(losses(resumed.metrics_path), losses(full.metrics_path), rtol=0, atol=1e-6)
    again = read_checkpoint(resumed.checkpoint_path)
    for k in avg:
        assert torch.allclose(again["model"][k], avg[k], atol=1e-6)
    resumed.apply_ema()
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, again["model"][k])


def test_resume_without_average_starts_it_at_the_weights(tmp_path):
    plain = make_trainer(tiny_cfg(steps=3), tmp_path)
    plain.train()
    weights = read_checkpoint(plain.checkpoint_path)["model"]
    tr = make_trainer(tiny_cfg(ema_decay=0.9), tmp_path)
    tr.load()
    assert tr.ema.n_updates == 0
    for k, v in tr.ema.average.items():
        assert torch.equal(v, weights[k])


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_config_refuses_a_decay_outside_0_1(decay):
    d = json.loads(json.dumps(TINY))
    d["train"]["ema_decay"] = decay
    with pytest.raises(ConfigError, match="train.ema_decay"):
        config_from_dict(d)


def test_validation_scores_the_average_and_keeps_the_trained_weights(tmp_path):
    from types import SimpleNamespace

    from eqflow.evaluation.metrics import nll

    cfg = tiny_cfg(ema_decay=0.9)
    torch.manual_seed(cfg.train.seed)
    val_x = 2.0 * torch.randn(16, 4, 2)
    val_x = val_x - val_x.mean(1, keepdim=True)
    trainer = make_trainer(cfg, tmp_path / "run")
    trainer.val_every, trainer.val_x = 3, val_x
    trainer.train()
    raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    logged = [json.loads(line)["val_nll"] for line in open(trainer.metrics_path) if "val_nll" in line]
    assert len(logged) >= 2

    torch.manual_seed(5)  # the tiny flow's log q uses a Hutchinson probe: same probe for all three
    val_nll = trainer.validation_nll()
    for k, v in trainer.model.state_dict().items():  # the trained weights are back in place
        assert torch.equal(v, raw[k])
    averaged = load_checkpoint(tmp_path / "run").flow
    torch.manual_seed(5)
    with torch.no_grad():
        expected = nll(averaged.log_prob(val_x))
    assert val_nll == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(5)
    with torch.no_grad():
        raw_nll = nll(trainer.model.log_prob(val_x))
    assert abs(raw_nll - val_nll) > 1e-6  # the average is a different model
