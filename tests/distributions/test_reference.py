import json

import numpy as np
import pytest
import torch

from eqflow.distributions.reference import (REFERENCE_VERSION, ReferenceData, ensure_particle_reference,
                                            load_reference, reference_path, save_reference,
                                            split_reference)
from eqflow.geometry import is_com_free


def _data(n=10, atoms=4, dim=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, atoms, dim, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen,
                                                                                        dtype=torch.float64)


def test_round_trip(tmp_path):
    x, u = _data()
    meta = {"system": "dw4", "tau": 1.0, "n_atoms": 4}
    p = save_reference(tmp_path / "sub" / "ref.npz", x, u, meta)
    ref = load_reference(p)
    assert isinstance(ref, ReferenceData) and len(ref) == 10
    assert is_com_free(ref.positions)
    torch.testing.assert_close(ref.positions, x - x.mean(1, keepdim=True))
    torch.testing.assert_close(ref.energies, u)
    assert ref.meta == meta
    # Meta is stored as a JSON string (no pickles needed to read it).
    with np.load(p, allow_pickle=False) as d:
        assert json.loads(str(d["meta"])) == meta


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_reference(tmp_path / "nope.npz")


def test_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    x, u = _data()
    p = save_reference(tmp_path / "ref.npz", x, u, {"v": 1})

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError):
        save_reference(p, x[:3], u[:3], {"v": 2})
    monkeypatch.undo()
    assert load_reference(p).meta == {"v": 1} and len(load_reference(p)) == 10
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ref.npz"]  # no temp files left


def test_shape_checks(tmp_path):
    x, u = _data()
    with pytest.raises(ValueError):
        save_reference(tmp_path / "r.npz", x, u[:5])
    with pytest.raises(ValueError):
        ReferenceData(x[0], u)


def test_split_is_disjoint_and_seeded():
    x, u = _data(n=100)
    train, test = split_reference(ReferenceData(x, u, {"a": 1}), 0.8, seed=0)
    assert len(train) == 80 and len(test) == 20 and train.meta == {"a": 1}
    allu = torch.cat([train.energies, test.energies]).sort().values
    torch.testing.assert_close(allu, u.sort().values)
    train2, _ = split_reference(ReferenceData(x, u), 0.8, seed=0)
    torch.testing.assert_close(train.energies, train2.energies)


def test_ensure_particle_reference_caches(tmp_path):
    p = ensure_particle_reference("dw4", cache_dir=tmp_path, n_samples=200, seed=1, chains=50,
                                  progress=False, burn_in=300)
    ref = load_reference(p)
    assert ref.positions.shape == (200, 4, 2)
    assert ref.meta["system"] == "dw4" and ref.meta["n_samples"] == 200 and ref.meta["seed"] == 1
    assert ref.meta["burn_in"] == 300 and ref.meta["version"] == REFERENCE_VERSION["dw4"]
    assert 0.2 < ref.meta["acceptance"] < 0.6
    # the equilibration check: chains from four short pairs and from none, reported per start
    assert set(ref.meta["mean_energy_by_start"]) == {"short_pairs", "long_pairs"}
    mtime = p.stat().st_mtime_ns
    assert ensure_particle_reference("dw4", cache_dir=tmp_path, n_samples=100, seed=1) == p
    assert p.stat().st_mtime_ns == mtime  # reused, not regenerated


def test_stale_particle_reference_is_regenerated(tmp_path):
    # A DW4 file from the old setup (no version: 2,000 burn-in steps, modes not equilibrated) is
    # not trusted: it is regenerated, with a warning, even though it holds enough samples.
    x, u = _data(n=300)
    p = save_reference(reference_path("dw4", tmp_path, seed=1), x[:, :4, :2], u, {"burn_in": 2000})
    with pytest.warns(UserWarning, match="under-equilibrated"):
        q = ensure_particle_reference("dw4", cache_dir=tmp_path, n_samples=100, seed=1, chains=50,
                                      progress=False, burn_in=300)
    assert q == p and load_reference(q).meta["version"] == REFERENCE_VERSION["dw4"]
