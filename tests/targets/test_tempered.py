import pytest
import torch

from eqflow.targets import DoubleWell, TemperedEnergy, masked_energy, target_temperature


def test_tempered_energy_scales_with_inverse_temperature_and_counts():
    torch.manual_seed(0)
    dw = DoubleWell(tau=2.0)
    assert target_temperature(dw) == 2.0
    e = TemperedEnergy(dw)
    x = torch.randn(7, 4, 2, dtype=torch.float64) * 2
    assert torch.equal(e.energy(x), dw.energy(x))
    e.temperature = 8.0
    # u_T = E / T with E = u_target · T_target.
    assert torch.allclose(e.energy(x), dw.energy(x) * 2.0 / 8.0, rtol=1e-14)
    assert torch.allclose(e.force(x), dw.force(x) / 4.0, rtol=1e-12)
    masked_energy(e, x)
    assert e.n_evaluated == 7 * 4  # energy twice, force once, masked energy once
    with pytest.raises(ValueError, match="positive"):
        TemperedEnergy(dw, t_target=0.0)
