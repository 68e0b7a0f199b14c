"""The path-gradient reverse KL (train.kl_gradient: path): same value, the total gradient minus the
zero-mean score term, and exactly zero where q = p."""
import json

import pytest
import torch

from eqflow.config import ConfigError, config_from_dict
from eqflow.distributions import MixtureBase
from eqflow.flows import MixtureFlow
from eqflow.nn import EGNNField
from eqflow.targets import Energy
from eqflow.training import path_gradient_kl_loss, reverse_kl_loss, run_training


class Harmonic(Energy):
    """u = |x|² / (2 s²): the CoM-free Gaussian of scale s, up to its normalizer."""

    def __init__(self, n_atoms, dim, s):
        super().__init__(n_atoms, dim)
        self.s = s

    def _energy(self, x):
        return x.pow(2).flatten(1).sum(-1) / (2 * self.s ** 2)


def make_flow(scale=1.0, divergence="exact", n_steps=16):
    torch.manual_seed(0)
    field = EGNNField(dim=2, n_node_features=1, hidden=8, n_layers=2, coord_aggregation="sum")
    base = MixtureBase(3, 2, n_components=1, scales=scale)
    return MixtureFlow(field, base, solver="rk4", n_steps=n_steps, divergence=divergence)


def grads(flow, loss):
    params = [p for p in flow.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params, allow_unused=True)  # one component: its logit is unused
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, gs)])


def test_total_gradient_is_path_plus_score_on_the_same_samples(float64):
    flow = make_flow(n_steps=48)  # forward and reverse solves agree to ~1e-8 (the identity needs it)
    for p in flow.field.parameters():  # a field far from the identity
        torch.nn.init.normal_(p, std=0.3)
    target = Harmonic(3, 2, s=0.8)
    torch.manual_seed(1)
    total, st = reverse_kl_loss(flow, target, 64)
    torch.manual_seed(1)  # the same base draws
    path, sp = path_gradient_kl_loss(flow, target, 64)
    assert abs(st["kl"] - sp["kl"]) < 1e-7 and abs(float(path.detach()) - sp["kl"]) < 1e-12
    torch.manual_seed(1)
    x, _ = flow.sample(64, with_log_prob=False)
    score = grads(flow, flow.log_prob(x.detach()).mean())  # ∂θ log q at fixed samples
    g_total, g_path = grads(flow, total), grads(flow, path)
    assert g_score_nonzero(score)
    torch.testing.assert_close(g_path + score, g_total, rtol=1e-5, atol=1e-7)


def g_score_nonzero(score):
    return score.abs().max() > 1e-3


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_path_gradient_vanishes_where_q_equals_p(float64, divergence):
    flow = make_flow(scale=0.7, divergence=divergence)
    last = [layer.coord_mlp[-1].weight for layer in flow.field.layers]
    for w in last:  # v = 0: the flow is its base, q = p below; the parameters still have gradients
        torch.nn.init.zeros_(w)
    target = Harmonic(3, 2, s=0.7)
    torch.manual_seed(2)
    total, _ = reverse_kl_loss(flow, target, 32)
    torch.manual_seed(2)
    path, _ = path_gradient_kl_loss(flow, target, 32)
    assert grads(flow, path).abs().max() < 1e-10
    assert grads(flow, total).abs().max() > 1e-3  # the score term: noise only


def test_path_gradient_refuses_mixtures_and_regularizers():
    field = EGNNField(dim=2, n_node_features=3, hidden=8, n_layers=1)
    flow = MixtureFlow(field, MixtureBase(3, 2, n_components=2, scales=1.0), node_features=torch.ones(3, 1))
    with pytest.raises(ValueError, match="single-component"):
        path_gradient_kl_loss(flow, Harmonic(3, 2, 1.0), 4)
    base = {"target": {"name": "dw4", "reference": None}, "train": {"kl_gradient": "path"}}
    for extra, match in (({"flow": {"n_components": 2}}, "n_components"),
                         ({"train": {"kl_gradient": "path", "kinetic_weight": 0.1}}, "kinetic_weight"),
                         ({"train": {"kl_gradient": "sideways"}}, "kl_gradient")):
        with pytest.raises(ConfigError, match=match):
            config_from_dict({**base, **extra})


def test_trainer_takes_path_gradient_steps(tmp_path):
    cfg = config_from_dict({
        "target": {"name": "dw4", "reference": None},
        "field": {"hidden": 8, "n_layers": 2},
        "flow": {"solver": "rk4", "n_steps": 2, "base_scale": 2.0},
        "train": {"steps": 4, "batch_size": 16, "lr": 1e-2, "log_every": 1, "kl_gradient": "path"},
        "eval": {"n_samples": 32, "batch_size": 32, "nll_samples": 0, "solver_check": 0},
    })
    summary = run_training(cfg, tmp_path / "run", progress=False, evaluate=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    assert len(rows) == 4 and all(abs(r["loss"] - r["kl"]) < 1e-4 for r in rows)  # the loss value is the KL
