"""Export of samples for viewers and loading of MD references."""
import mdtraj
import numpy as np
import pytest
import torch

from eqflow.evaluation.trajectory import export_samples, load_md_reference
from eqflow.targets.molecular import alanine_dipeptide


@pytest.mark.parametrize("ext", [".pdb", ".dcd", ".h5"])
def test_export_roundtrip(tmp_path, ext):
    if ext == ".h5":
        pytest.importorskip("tables")
    m = alanine_dipeptide("vacuum")
    x = m.positions[None].repeat(3, 1, 1) + 0.01 * torch.randn(3, 22, 3, dtype=torch.float64)
    files = export_samples(x, m.topology, str(tmp_path / f"s{ext}"))
    top = files[1] if ext == ".dcd" else None
    t = mdtraj.load(files[0], top=top) if top else mdtraj.load(files[0])
    assert t.n_frames == 3
    np.testing.assert_allclose(t.xyz, x.numpy(), atol=2e-3 if ext == ".pdb" else 1e-5)
    with pytest.raises(ValueError):
        export_samples(x[:, :5], m.topology, str(tmp_path / "bad.pdb"))


def test_load_md_reference_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_md_reference(tmp_path / "missing.h5")
    m = alanine_dipeptide("vacuum", platform="Reference")
    export_samples(m.positions[None], m.topology, str(tmp_path / "x.dcd"))
    with pytest.raises(ValueError, match="topology"):
        load_md_reference(tmp_path / "x.dcd")
    with pytest.raises(ValueError, match="energ"):
        load_md_reference(tmp_path / "x.dcd", topology=m.topology)
    ref = load_md_reference(tmp_path / "x.dcd", topology=m.topology, energy=m.energy)
    assert ref.positions.shape == (1, 22, 3) and ref.positions.mean(1).abs().max() < 1e-6
    assert torch.isfinite(ref.energies).all()
