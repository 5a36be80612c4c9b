"""The one guard around every command line program: logging, and errors as one line.

A :class:`~spermfuse.errors.SpermfuseError` (or a file-system error naming a path) is the
user's to fix: it prints as ``error: ...`` and exits with status 2. Ctrl-C exits with 130
and says how to continue. Anything else is a bug and keeps its traceback. Used by
``train.py``, ``fuse.py``, ``evaluate.py``, ``benchmark.py`` and the ``python -m`` entry
points; argument parsing stays in each program.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import SpermfuseError, user_message

LOG_FORMAT = "%(message)s"
TIMED_LOG_FORMAT = "%(asctime)s %(message)s"  # training: each epoch line carries its time


def run(body: Callable[[], int | None], timed: bool = False, interrupted: str = "interrupted") -> int:
    """Set up logging, call ``body()`` and map what it raises to an exit status."""
    logging.basicConfig(
        level=logging.INFO, format=TIMED_LOG_FORMAT if timed else LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr
    )
    try:
        return body() or 0
    except (SpermfuseError, OSError) as error:
        if user_message(error) is None:
            raise  # a bug, not bad input: keep the traceback
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
