from pathlib import Path

import pytest

from eqflow.config import ConfigError, apply_overrides, config_from_dict, load_config


def test_shipped_configs_load():
    paths = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    assert {"dw4", "lj13", "lj55_pairwise", "ala2_implicit", "ala2_pairwise"} <= {p.stem for p in paths}
    for path in paths:  # every shipped config, not a list that misses the new ones
        cfg = load_config(path)
        assert cfg.train.steps > 0


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'train.lrr'"):
        config_from_dict({"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match="'optim'"):
        config_from_dict({"optim": {}})


def test_wrong_types_and_values_are_named():
    with pytest.raises(ConfigError, match="'train.steps' must be int"):
        config_from_dict({"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="'train.steps' must be int"):
        config_from_dict({"train": {"steps": 1.5}})
    with pytest.raises(ConfigError, match="'flow.solver' must be one of"):
        config_from_dict({"flow": {"solver": "rk45"}})
    with pytest.raises(ConfigError, match="'flow.adjoint' must be bool"):
        config_from_dict({"flow": {"adjoint": "yes"}})
    with pytest.raises(ConfigError, match="'train.lr' must be positive"):
        config_from_dict({"train": {"lr": -1}})
    with pytest.raises(ConfigError, match="base_scale"):
        config_from_dict({"flow": {"n_components": 2, "base_scale": [1.0]}})
    with pytest.raises(ConfigError, match="'train.jacobian_weight' must be >= 0"):
        config_from_dict({"train": {"jacobian_weight": -0.1}})
    with pytest.raises(ConfigError, match="'eval.solver' must be one of"):
        config_from_dict({"eval": {"solver": "rk45"}})
    with pytest.raises(ConfigError, match="'field.n_env' is for field.kind pairwise"):
        config_from_dict({"field": {"n_env": 4}})
    with pytest.raises(ConfigError, match="'field.n_env' must be a whole number"):
        config_from_dict({"field": {"kind": "pairwise", "n_env": -1}})
    with pytest.raises(ConfigError, match="'eval.n_steps' must be positive"):
        config_from_dict({"eval": {"n_steps": 0}})


def test_overrides_parse_and_check():
    cfg = apply_overrides(config_from_dict({}), ["train.lr=3e-4", "flow.n_steps=5", "target.kwargs.tau=2"])
    assert cfg.train.lr == 3e-4 and cfg.flow.n_steps == 5 and cfg.target.kwargs == {"tau": 2}
    with pytest.raises(ConfigError, match="'train.nope'"):
        apply_overrides(cfg, ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(cfg, ["train.lr"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_objective_keys_validated():
    cfg = config_from_dict({"train": {"kl_weight": 0.0, "fm_weight": 1.0},
                            "fm": {"permute": True}, "buffer": {"clip_quantile": 0.99},
                            "anneal": {"temperatures": [600, 300], "fractions": [0.3]},
                            "flow": {"base": "harmonic"}})
    assert cfg.train.fm_weight == 1.0 and cfg.anneal.temperatures == [600, 300] and cfg.flow.base == "harmonic"
    for bad, match in [
        ({"train": {"kl_weight": 0.0}}, "at least one must be > 0"),
        ({"train": {"fm_weight": -1.0}}, "'train.fm_weight' must be >= 0"),
        ({"target": {"force_clip": 0.0}}, "'target.force_clip' must be positive"),
        ({"train": {"kl_weight": 0.0, "fm_data_weight": 1.0}, "target": {"reference": None}},
         "'train.fm_data_weight' > 0 needs reference"),
        ({"fm": {"align": False, "permute": True}}, "'fm.permute' needs"),
        ({"fm": {"sigma_min": -0.1}}, "'fm.sigma_min'"),
        ({"fm": {"batch_size": 0}}, "'fm.batch_size' must be positive"),
        ({"buffer": {"divergence": "approx"}}, "'buffer.divergence' must be one of"),
        ({"buffer": {"clip_quantile": 1.5}}, "'buffer.clip_quantile'"),
        ({"buffer": {"clip_log_ratio": 0}}, "'buffer.clip_log_ratio'"),
        ({"buffer": {"tempering": 2.0}}, "'buffer.tempering'"),
        ({"buffer": {"refresh_every": 0}}, "'buffer.refresh_every' must be positive"),
        ({"flow": {"base": "uniform"}}, "'flow.base' must be one of"),
        ({"flow": {"harmonic_k": -1.0}}, "'flow.harmonic_k'"),
        ({"anneal": {"temperatures": [300, 600], "fractions": [0.5]}}, "must not increase"),
        ({"anneal": {"temperatures": [600, 0], "fractions": [0.5]}}, "positive numbers"),
        ({"anneal": {"temperatures": [600, 300]}}, "exactly one of"),
        ({"anneal": {"temperatures": [600, 300], "fractions": [0.5], "steps_per_rung": 10}}, "exactly one of"),
        ({"anneal": {"temperatures": [600, 450, 300], "fractions": [0.5]}}, "'anneal.fractions' needs 2"),
        ({"anneal": {"temperatures": [600, 300], "fractions": [0.7, 0.6]}}, "'anneal.fractions' needs 1"),
        ({"anneal": {"temperatures": [600, 300], "steps_per_rung": -1}}, "'anneal.steps_per_rung'"),
        ({"anneal": {"fractions": [0.5]}}, "need 'anneal.temperatures'"),
        ({"anneal": {"temperatures": [600, 400], "fractions": [0.5]}, "target": {"kwargs": {"temperature": 300}}},
         "must end at the target's temperature"),
        ({"anneal": {"nope": 1}}, "'anneal.nope'"),
        ({"model": {"kind": "ic"}, "train": {"fm_weight": 1.0}}, "need model.kind: cartesian"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict(bad)


def test_e3nn_field_keys_checked():
    cfg = config_from_dict({"field": {"kind": "e3nn", "edges": "radius", "edge_channels": None,
                                      "e3nn_backend": "e3nn", "radial_hidden": 8}})
    assert cfg.field.edges == "radius" and cfg.field.edge_channels is None
    with pytest.raises(ConfigError, match="'field.edges' must be one of"):
        config_from_dict({"field": {"kind": "e3nn", "edges": "knn"}})
    with pytest.raises(ConfigError, match="'field.e3nn_backend' must be one of"):
        config_from_dict({"field": {"e3nn_backend": "jax"}})
    with pytest.raises(ConfigError, match="'field.edge_channels' must be positive or null"):
        config_from_dict({"field": {"edge_channels": 0}})
    with pytest.raises(ConfigError, match="'field.hidden_irreps' is not an irreps string"):
        config_from_dict({"field": {"kind": "e3nn", "hidden_irreps": "16 apples"}})
    with pytest.raises(ConfigError, match="must include 1o"):
        config_from_dict({"field": {"kind": "e3nn", "hidden_irreps": "16x0e + 4x2e"}})
    with pytest.raises(ConfigError, match="'field.r_max' must be positive"):
        config_from_dict({"field": {"kind": "e3nn", "r_max": 0.0}})
