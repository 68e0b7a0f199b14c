import os

import numpy as np
import pytest

from eqflow.data_io import atomic_savez, atomic_write, atomic_write_text, sidecar_paths


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    p = tmp_path / "sub" / "a.npz"
    atomic_savez(p, x=np.arange(3))
    with np.load(p) as d:
        assert d["x"].tolist() == [0, 1, 2]
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~umask

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, fail)
    with np.load(p) as d:  # old content intact
        assert d["x"].tolist() == [0, 1, 2]
    assert sorted(f.name for f in p.parent.iterdir()) == ["a.npz"]  # no temporary file left


def test_atomic_write_text_and_sidecars(tmp_path):
    p = atomic_write_text(tmp_path / "m.json", "{}\n")
    assert p.read_text() == "{}\n"
    assert sidecar_paths("runs/ala2.h5") == ("runs/ala2.npz", "runs/ala2.json")
    assert sidecar_paths(tmp_path / "t.dcd") == (str(tmp_path / "t.npz"), str(tmp_path / "t.json"))
