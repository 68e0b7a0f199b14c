"""What every script does with errors a user can cause: one line on stderr, no traceback."""
from __future__ import annotations

import sys

from .errors import EqflowError

__all__ = ["run_cli"]


def run_cli(main, argv=None):
    """Call ``main(argv)``; user errors and stops become one line and an exit status.

    - :class:`~eqflow.errors.EqflowError` (bad config, run folder, checkpoint, worker) and
      ``FileNotFoundError`` (a path given on the command line): ``error: <message>``, status 2;
    - :class:`~eqflow.training.TrainingInterrupted` (SIGINT/SIGTERM during training, checkpoint
      saved): ``checkpoint saved at step N, resume with --resume``, status 128 + signal number;
    - any other ``KeyboardInterrupt``: ``interrupted``, status 130.
    Bugs (every other exception) keep their traceback.
    """
    from .training.trainer import TrainingInterrupted

    try:
        return main(argv)
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (EqflowError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
