import io

import pytest
import torch

from eqflow.training.annealing import TemperatureLadder, geometric_ladder


def test_geometric_ladder_endpoints_and_ratio():
    temps = geometric_ladder(1200.0, 300.0, 5)
    assert temps[0] == 1200.0 and temps[-1] == 300.0 and len(temps) == 5
    ratios = [b / a for a, b in zip(temps, temps[1:])]
    assert all(r == pytest.approx(0.5**0.5) for r in ratios)
    assert all(b < a for a, b in zip(temps, temps[1:]))
    assert geometric_ladder(700.0, 300.0, 1) == [300.0]
    assert geometric_ladder(300.0, 300.0, 3) == [300.0, 300.0, 300.0]
    with pytest.raises(ValueError, match="high to low"):
        geometric_ladder(300.0, 600.0, 3)


def test_step_boundaries():
    ladder = TemperatureLadder([900.0, 600.0, 300.0], steps_per_rung=[10, 5])
    assert ladder.starts == [0, 10, 15]
    expected = {0: 900.0, 9: 900.0, 10: 600.0, 14: 600.0, 15: 300.0, 10_000: 300.0, -3: 900.0}
    for step, t in expected.items():
        assert ladder.temperature_at(step) == t
    assert [ladder.rung_at(s) for s in (0, 9, 10, 14, 15, 99)] == [0, 0, 1, 1, 2, 2]
    same = TemperatureLadder([900.0, 600.0, 300.0], steps_per_rung=10)
    assert same.starts == [0, 10, 20]
    # A K-long list: the last entry does not end the target rung.
    assert TemperatureLadder([900.0, 300.0], [4, 4]).temperature_at(100) == 300.0


def test_monotone_and_exact_endpoints():
    ladder = TemperatureLadder(geometric_ladder(1000.0, 300.0, 6), steps_per_rung=7)
    temps = [ladder.temperature_at(s) for s in range(60)]
    assert temps[0] == 1000.0 and temps[-1] == 300.0 == ladder.target
    assert all(b <= a for a, b in zip(temps, temps[1:]))
    with pytest.raises(ValueError, match="increase"):
        TemperatureLadder([300.0, 600.0], 5)
    with pytest.raises(ValueError, match="entries"):
        TemperatureLadder([900.0, 600.0, 300.0], [5])


def test_from_fractions():
    ladder = TemperatureLadder.from_fractions([900.0, 600.0, 300.0], total_steps=1000, fractions=[0.2, 0.3])
    assert ladder.starts == [0, 200, 500]
    assert ladder.temperature_at(999) == 300.0 and ladder.temperature_at(199) == 900.0
    thirds = TemperatureLadder.from_fractions([900.0, 600.0, 300.0], total_steps=10, fractions=[1 / 3, 1 / 3])
    assert thirds.starts == [0, 3, 6]   # floor of the cumulative fractions
    with pytest.raises(ValueError, match="sum"):
        TemperatureLadder.from_fractions([900.0, 600.0, 300.0], 100, [0.7, 0.7])


def test_state_dict_round_trip():
    ladder = TemperatureLadder([900.0, 450.0, 300.0], [3, 8])
    blob = io.BytesIO()
    torch.save(ladder.state_dict(), blob)
    blob.seek(0)
    other = TemperatureLadder([1.0], 0)
    other.load_state_dict(torch.load(blob, weights_only=True))
    assert other.temperatures == ladder.temperatures and other.starts == ladder.starts
    assert [other.temperature_at(s) for s in range(15)] == [ladder.temperature_at(s) for s in range(15)]
