"""Checkpoint files: atomic writes with a fallback copy, verified and safe loading.

A checkpoint is a plain ``torch.save`` zip file holding only tensors and plain Python data
(dicts, lists, tuples, strings, numbers), so it loads with torch's safe unpickler
(``weights_only=True``): a checkpoint from someone else cannot run code on load. Every record of
the zip file carries a CRC-32 that :func:`read_checkpoint` checks before unpickling, so flipped bytes
are refused instead of loading as changed weights.

Writing (:func:`save_checkpoint_atomic`) goes to a temporary file in the same folder, is flushed to
disk, and then replaces the checkpoint with ``os.replace`` (atomic); the checkpoint it replaces is
kept as ``<name>.prev`` (:func:`previous_path`), the fallback when the newest one is damaged.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError

__all__ = ["save_checkpoint_atomic", "read_checkpoint", "previous_path", "remove_temporary_files",
           "TEMP_MARKER"]

TEMP_MARKER = ".tmp-"


def previous_path(path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.pt.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint_atomic(obj: dict, path, keep_previous: bool = True) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``.

    A crash or kill during the write leaves the previous checkpoint intact. With ``keep_previous``
    the file being replaced is moved to :func:`previous_path` first, so a checkpoint damaged later
    (disk, copy) still has a fallback one save older.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def remove_temporary_files(folder) -> list[Path]:
    """Delete temporary files left in ``folder`` by writes that were killed (``.<name>.tmp-<pid>``)
    whose writer is gone. Returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TEMP_MARKER}*"):
        pid = p.name.rsplit(TEMP_MARKER, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another process is writing it right now
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
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def read_checkpoint(path) -> dict:
    """Verify and load a checkpoint written by :func:`save_checkpoint_atomic`.

    Raises
    ------
    CheckpointError
        One line naming the file when it is missing, not a torch zip file, damaged (CRC mismatch),
        or carries objects the safe unpickler refuses (arbitrary classes that could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is damaged or not a checkpoint (not a torch zip file)")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every record and checks its CRC-32
    except Exception as err:  # damaged headers surface as BadZipFile, UnicodeDecodeError, EOFError...
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: record {bad!r} fails its checksum")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln]
        what = lines[0].split("WeightsUnpickler error:")[-1].split(" was not")[0].strip() if lines else "not plain data"
        raise CheckpointError(f"{path} carries objects that are unsafe to load ({what}); only tensors "
                              "and plain data are accepted") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an eqflow checkpoint")
    return state
