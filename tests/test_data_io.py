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


def test_atomic_write_with_backup_never_leaves_the_path_missing(tmp_path, monkeypatch):
    """The backup is linked, not moved: at the moment the new file lands, the old one is still at the
    path (a reader polling a checkpoint never sees it absent) and the backup holds the old content."""
    import os

    from eqflow.data_io import atomic_write
    path, backup = tmp_path / "c.bin", tmp_path / "c.bin.prev"
    atomic_write(path, lambda tmp: open(tmp, "w").write("one"), backup=backup)
    assert not backup.exists()
    atomic_write(path, lambda tmp: open(tmp, "w").write("two"), backup=backup)
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        if str(dst) == str(path):
            seen.append((path.exists(), backup.read_text()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    atomic_write(path, lambda tmp: open(tmp, "w").write("three"), backup=backup)
    monkeypatch.undo()
    assert seen == [(True, "two")]
    assert path.read_text() == "three" and backup.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.bin.prev"]  # no temporary left


def test_atomic_write_backup_without_hard_links_moves_the_old_file(tmp_path, monkeypatch):
    import os

    from eqflow.data_io import atomic_write
    path, backup = tmp_path / "c.bin", tmp_path / "c.bin.prev"
    atomic_write(path, lambda tmp: open(tmp, "w").write("one"))

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    atomic_write(path, lambda tmp: open(tmp, "w").write("two"), backup=backup)
    assert path.read_text() == "two" and backup.read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.bin.prev"]
