"""File helpers shared by every writer of reference data: one atomic write, MD sidecar names.

Standard library and numpy only, so any module may import it (no cycles, nothing heavy).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["atomic_write", "atomic_savez", "atomic_write_text", "sidecar_paths"]


def atomic_write(path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Write ``path`` through ``write(tmp_path)`` on a temporary file in the same folder, then ``os.replace``.

    A crash or an exception mid-write leaves any previous file intact and removes the temporary file;
    ``os.replace`` within one folder is atomic on POSIX and Windows.

    Parameters
    ----------
    path : destination; parent folders are created.
    write : writes the content to the path it is given (``np.savez``, an HDF5 writer, ...).
    suffix : ending of the temporary name; writers that append an extension (``np.savez`` adds
        ``.npz``) need it to end with that extension.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_savez(path, **arrays) -> Path:
    """``np.savez(path, **arrays)`` via :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` via :func:`atomic_write`."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
    return atomic_write(path, write)


def sidecar_paths(trajectory) -> tuple[str, str]:
    """``(<stem>.npz, <stem>.json)`` beside an MD trajectory file (float64 data and metadata)."""
    stem, _ = os.path.splitext(os.fspath(trajectory))
    return stem + ".npz", stem + ".json"
