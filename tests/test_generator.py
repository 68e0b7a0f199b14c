import pytest

from eqflow.config import ConfigError, apply_overrides, config_from_dict
from eqflow.generator import AUTO_EXACT_CPU_COORDS, resolve_eval_divergence


def test_auto_eval_divergence_is_exact_where_affordable():
    assert resolve_eval_divergence("auto", 4, 2, "cpu") == "exact"  # DW4
    assert resolve_eval_divergence("auto", 13, 3, "cpu") == "exact"  # LJ13: 39 coordinates
    assert 39 <= AUTO_EXACT_CPU_COORDS < 66
    assert resolve_eval_divergence("auto", 22, 3, "cpu") == "hutchinson"  # alanine on one core: hours
    assert resolve_eval_divergence("auto", 22, 3, "cuda") == "exact"
    assert resolve_eval_divergence("auto", 55, 3, "cuda:0") == "exact"
    for mode in ("exact", "hutchinson"):
        assert resolve_eval_divergence(mode, 55, 3, "cpu") == mode


def test_auto_is_a_valid_eval_divergence():
    cfg = apply_overrides(config_from_dict({}), ["eval.divergence=auto"])
    assert cfg.eval.divergence == "auto"
    with pytest.raises(ConfigError):
        apply_overrides(config_from_dict({}), ["flow.divergence=auto"])  # training needs a choice
