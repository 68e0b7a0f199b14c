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

import pickle
import zipfile
from pathlib import Path

import torch

from .data_io import atomic_write, remove_temporary_files
from .errors import CheckpointError

__all__ = ["save_checkpoint_atomic", "read_checkpoint", "previous_path", "remove_temporary_files"]


def previous_path(path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.pt.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_checkpoint_atomic(obj: dict, path, keep_previous: bool = True) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then ``os.replace`` onto
    ``path`` (:func:`eqflow.data_io.atomic_write`).

    A crash or kill during the write leaves the previous checkpoint intact. With ``keep_previous``
    the file being replaced is moved to :func:`previous_path` first, so a checkpoint damaged later
    (disk, copy) still has a fallback one save older.
    """
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), suffix=".pt", fsync=True,
                        backup=previous_path(path) if keep_previous else None)


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
