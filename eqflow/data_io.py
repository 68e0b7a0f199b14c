"""File helpers shared by every writer of reference data: one atomic write, MD sidecar names.

Standard library and numpy only, so any module may import it (no cycles, nothing heavy).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["atomic_write", "atomic_savez", "atomic_write_text", "sidecar_paths", "remove_temporary_files",
           "TEMP_MARKER"]


TEMP_MARKER = ".tmp-"  # temporary names: .<name>.tmp-<pid>-<random><suffix> (see remove_temporary_files)


def _keep_as_backup(path: Path, backup: Path) -> None:
    """Make ``backup`` the current ``path`` while ``path`` stays in place (see :func:`atomic_write`)."""
    # A moved-away path (the simple way) is missing until the new file lands: a reader in that
    # window, or a kill there, finds no file at all (a test polling a checkpoint saw exactly that).
    staged = None
    try:
        fd, staged = tempfile.mkstemp(prefix=f".{backup.name}{TEMP_MARKER}{os.getpid()}-", dir=backup.parent)
        os.close(fd)
        os.unlink(staged)
        os.link(path, staged)
        os.replace(staged, backup)  # atomic: the old backup is replaced, never deleted first
    except OSError:
        if staged is not None and os.path.exists(staged):
            os.unlink(staged)
        os.replace(path, backup)


def atomic_write(path, write: Callable[[str], None], suffix: str = ".tmp", fsync: bool = False,
                 backup=None) -> Path:
    """Write ``path`` through ``write(tmp_path)`` on a temporary file in the same folder, then ``os.replace``.

    A crash or an exception mid-write leaves any previous file intact and removes the temporary file;
    ``os.replace`` within one folder is atomic on POSIX and Windows.

    Parameters
    ----------
    path : destination; parent folders are created.
    write : writes the content to the path it is given (``np.savez``, an HDF5 writer, ...).
    suffix : ending of the temporary name; writers that append an extension (``np.savez`` adds
        ``.npz``) need it to end with that extension.
    fsync : flush the file (and the folder entry) to disk before and after the replace, so that a
        power loss cannot leave a renamed but empty file (checkpoints).
    backup : if given and ``path`` exists, it becomes this file just before the replace (a fallback
        one write older). ``path`` itself never goes missing: the backup is a hard link to the old
        file, and the replace swaps ``path`` over in one step (where the file system has no hard links
        the old file is moved, and ``path`` is absent between the two renames).

    Returns
    -------
    The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if backup is not None and path.exists():
            _keep_as_backup(path, Path(backup))
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporary_files(folder) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` left in ``folder`` by writers that were
    killed (kill -9, power loss); files of a writer still running are kept. Returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TEMP_MARKER}*"):
        pid = p.name.split(TEMP_MARKER, 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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
