"""The model protocol: a hand-built model trains, checkpoints, reloads and evaluates without a config;
evaluation folds enantiomers (and adds log 2) only for reflection-symmetric models."""
import math

import pytest
import torch

from eqflow import CoMFreeGaussian, ContinuousFlow, EGNNField, Generator
from eqflow.config import TrainConfig
from eqflow.distributions import ReferenceData
from eqflow.evaluation.report import evaluate_generator
from eqflow.geometry import remove_mean
from eqflow.models import DensityModel, check_model
from eqflow.targets import DoubleWell
from eqflow.training import Trainer, load_model_weights


def hand_built(seed=0):
    torch.manual_seed(seed)
    return ContinuousFlow(EGNNField(dim=2, hidden=16, n_layers=2), CoMFreeGaussian(4, 2, scale=2.0),
                          solver="rk4", n_steps=4)


def test_hand_built_model_trains_checkpoints_reloads_and_evaluates(tmp_path):
    model, target = hand_built(), DoubleWell()
    assert isinstance(model, DensityModel) and model.reflection_symmetric
    settings = TrainConfig(steps=5, batch_size=32, lr=5e-3, lr_schedule="constant", checkpoint_every=5)
    summary = Trainer(model, target, settings, out_dir=tmp_path, progress=False).train()
    assert summary["steps"] == 5
    fresh = load_model_weights(hand_built(seed=1), tmp_path)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    gen = Generator(fresh, target)  # no config: evaluation settings are the model's own
    assert gen.solver_settings().label == "rk4-4" and gen.divergence == "exact"
    ref_x = remove_mean(torch.randn(50, 4, 2) * 1.5)
    ref = ReferenceData(ref_x, target.energy(ref_x).detach())
    metrics = evaluate_generator(gen, ref, n_samples=64, nll_samples=50, plots=False)
    assert 0 < metrics["ess"] <= 1 and math.isfinite(metrics["nll"]) and metrics["eval_solver"] == "rk4-4"
    torch.testing.assert_close(torch.tensor(metrics["nll"], dtype=torch.float64), -gen.log_prob(ref_x).mean().double(),
                               rtol=0, atol=1e-4)


def test_non_symmetric_model_gets_no_log_2(tmp_path):
    from eqflow.builders import build_ic_flow
    from eqflow.config import config_from_dict
    from eqflow.targets.molecular import alanine_dipeptide

    mol = alanine_dipeptide("vacuum")
    cfg = config_from_dict({"target": {"name": "ala2_vacuum", "reference": None},
                            "model": {"kind": "ic", "ic_layers": 2, "ic_hidden": 16}})
    torch.manual_seed(0)
    ic = build_ic_flow(cfg, mol.energy)
    assert ic.reflection_symmetric is False
    x_ref = remove_mean(mol.positions[None].float() + 0.003 * torch.randn(20, 22, 3))
    ref = ReferenceData(x_ref, torch.zeros(20))
    own = evaluate_generator(Generator(ic, mol.energy), ref, n_samples=40, nll_samples=20, plots=False)
    ic.reflection_symmetric = True  # the same density, declared symmetric: NLL exactly log 2 lower
    sym = evaluate_generator(Generator(ic, mol.energy), ref, n_samples=40, nll_samples=20, plots=False)
    assert own["folded"] is False and sym["folded"] is True
    assert own["d_fraction"] == 0.0  # the IC model makes the target's own enantiomer only
    assert own["nll"] - sym["nll"] == pytest.approx(math.log(2.0), abs=1e-5)


def test_check_model_names_what_is_missing():
    class NotAModel(torch.nn.Module):
        def sample(self, n):
            return None

    with pytest.raises(TypeError, match="log_prob, reflection_symmetric"):
        check_model(NotAModel())
