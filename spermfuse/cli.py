"""The one guard around every command line program: logging, and errors as one line.

A :class:`~spermfuse.core.errors.SpermfuseError` (or a file-system error naming a path) is the
user's to fix: it prints as ``error: ...`` and exits with status 2. Ctrl-C exits with 130
and says how to continue; a program given a ``preemption.StopRequest`` (training) stops on
SIGTERM or SIGUSR1, what schedulers send before a kill, and exits with 75 (EX_TEMPFAIL: try
again), asking Slurm to requeue it after SIGUSR1. Anything else is a bug and keeps its traceback. Used by
``train.py``, ``fuse.py``, ``evaluate.py``, ``benchmark.py`` and the ``python -m`` entry
points; argument parsing stays in each program.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import subprocess
import sys
from typing import Callable

from .core.errors import SpermfuseError, user_message
from .preemption import Preempted, StopRequest

LOG_FORMAT = "%(message)s"
TIMED_LOG_FORMAT = "%(asctime)s %(message)s"  # training: each epoch line carries its time


PREEMPTED_STATUS = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, run it again to continue


class ArgumentParser(argparse.ArgumentParser):
    """argparse without abbreviations (``--epoch`` is not silently ``--epochs``) and with a
    "did you mean" for a mistyped flag, instead of the whole usage."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        flags = [flag for action in self._actions for flag in action.option_strings]
        hints = []
        for word in message.replace(",", " ").split():
            word = word.split("=")[0].rstrip(":")  # "argument --cal-fraction: invalid float value" names a real flag
            if word.startswith("--") and word not in flags:
                close = difflib.get_close_matches(word, flags, n=1)
                if close:
                    hints.append(f"{word}: did you mean {close[0]}?")
        line = f"{self.prog}: error: {message}" + (f" ({'; '.join(hints)})" if hints else "")
        self.exit(2, f"{line}\n(see {self.prog} --help)\n")


def argument_parser(description: str | None = None, **kwargs) -> ArgumentParser:
    """The parser every spermfuse program uses (see :class:`ArgumentParser`)."""
    return ArgumentParser(description=description, **kwargs)


def requeue_under_slurm(signal_number: int) -> bool:
    """After SIGUSR1 (``sbatch --signal=USR1@...``: the time limit is near) ask Slurm to requeue
    this job; after SIGTERM Slurm's own preemption policy decides. True when asked."""
    job = os.environ.get("SLURM_JOB_ID")
    if signal_number != signal.SIGUSR1 or not job:
        return False
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        print(f"could not requeue Slurm job {job} ({error}); resubmit it", file=sys.stderr)
        return False
    return True


def run(
    body: Callable[[], int | None],
    timed: bool = False,
    interrupted: str = "interrupted",
    stop: StopRequest | None = None,
) -> int:
    """Set up logging, call ``body()`` and map what it raises to an exit status (``stop``: handle
    SIGTERM/SIGUSR1 with it, and exit with :data:`PREEMPTED_STATUS` when they stop the program)."""
    logging.basicConfig(
        level=logging.INFO, format=TIMED_LOG_FORMAT if timed else LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr
    )
    if stop is not None:
        stop.install()
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
    except Preempted as stop:
        requeued = requeue_under_slurm(stop.signal_number)
        print(f"stopped by {stop}: {interrupted}{' (Slurm requeues it)' if requeued else ''}", file=sys.stderr)
        return PREEMPTED_STATUS
