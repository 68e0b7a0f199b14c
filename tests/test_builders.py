from eqflow.builders import build_field
from eqflow.config import load_config
from eqflow.nn import E3NNField, ScaledField


def test_e3nn_configs_build_their_field():
    lj = build_field(load_config("configs/lj13_e3nn.yaml"), dim=3, n_node_features=1)
    assert isinstance(lj, E3NNField) and lj.r_max == 6.0 and lj.edges == "dense"
    ala = build_field(load_config("configs/ala2_implicit_e3nn.yaml"), dim=3, n_node_features=5)
    assert isinstance(ala, ScaledField) and isinstance(ala.field, E3NNField)
    assert ala.length_scale == 0.1 and ala.n_node_features == 5
