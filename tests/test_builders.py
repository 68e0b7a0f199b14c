from eqflow.builders import build_field
from eqflow.config import load_config
from eqflow.nn import E3NNField, ScaledField


def test_e3nn_configs_build_their_field():
    lj = build_field(load_config("configs/lj13_e3nn.yaml"), dim=3, n_node_features=1)
    assert isinstance(lj, E3NNField) and lj.r_max == 6.0 and lj.edges == "dense"
    ala = build_field(load_config("configs/ala2_implicit_e3nn.yaml"), dim=3, n_node_features=5)
    assert isinstance(ala, ScaledField) and isinstance(ala.field, E3NNField)
    assert ala.length_scale == 0.1 and ala.n_node_features == 5


def test_pairwise_configs_build_their_field_with_the_bond_graph():
    import torch
    from eqflow.builders import build_flow, build_target
    from eqflow.config import apply_overrides
    from eqflow.nn import PairwiseField

    lj = build_field(load_config("configs/lj55_pairwise.yaml"), dim=3, n_node_features=1)
    assert isinstance(lj, PairwiseField) and lj.pair_features is None
    env = build_field(apply_overrides(load_config("configs/lj55_pairwise.yaml"), ["field.n_env=6"]), dim=3,
                      n_node_features=1)
    assert env.n_env == 6 and env.lin_env.in_features == 12
    cfg = apply_overrides(load_config("configs/ala2_implicit.yaml"),
                          ["field.kind=pairwise", "field.n_layers=1", "target.kwargs.n_workers=0"])
    target = build_target(cfg)  # the real OpenMM system: its mdtraj bond graph gives the pair features
    flow = build_flow(cfg, target)
    field = flow.field.field  # inside the nm -> 0.1 nm ScaledField
    assert isinstance(field, PairwiseField) and field.n_atoms == 22
    pf = field.pair_features  # [231 pairs, 4]: bonded, 2, 3 bonds apart, farther
    assert pf.shape == (231, 4) and torch.all(pf.sum(-1) == 1)
    assert pf[:, 0].sum() == 21  # 21 bonds in the tree of alanine dipeptide's 22 atoms
