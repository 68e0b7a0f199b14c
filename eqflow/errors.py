"""Errors a user can cause, each with a message that names the problem in one line.

Scripts catch :class:`EqflowError` and print ``error: <message>`` without a traceback; library
users catch the specific classes. ``ConfigError`` (in :mod:`eqflow.config`) is one of them.
"""
from __future__ import annotations

__all__ = ["EqflowError", "RunFolderError", "CheckpointError", "WorkerError"]


class EqflowError(Exception):
    """Base of eqflow's user-facing errors (bad input, bad files, failed workers)."""


class RunFolderError(EqflowError):
    """A run folder cannot be used as asked (existing run without --resume/--overwrite, nothing to resume)."""


class CheckpointError(EqflowError):
    """A checkpoint is missing, corrupt, unsafe to load, or not an eqflow checkpoint."""


class WorkerError(EqflowError, RuntimeError):
    """An energy worker process failed, died, hung or answered out of turn; the pool was closed."""
