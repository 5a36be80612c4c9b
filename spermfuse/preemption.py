"""Stopping on a scheduler's request without losing work.

Slurm and most schedulers send SIGTERM (preemption) or a chosen signal (``sbatch
--signal=USR1@120``: the time limit is near) before they kill a job. A :class:`StopRequest`
installed for those signals defers the stop while a training epoch runs: the step in progress
finishes, the trainer writes ``last.pt`` with the position inside the epoch, and raises
:class:`Preempted`; ``--resume`` then continues from the next step to the same logits. Outside a
training epoch (data checks, evaluation, writing files) the signal raises :class:`Preempted` at
once, and every atomic write and lock cleans up on the way out.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(BaseException):
    """Stopped on a scheduler's signal (a BaseException, like Ctrl-C: ``except Exception`` does
    not swallow it)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class StopRequest:
    """The signal handler of a preemptible program and the flag a training loop polls."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self.deferring = False

    def __call__(self, signal_number: int, frame=None) -> None:
        if self.deferring and self.signal_number is None:
            self.signal_number = signal_number
            log.warning("%s received: stopping after this step", signal.Signals(signal_number).name)
            return
        raise Preempted(signal_number)

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived while deferring."""
        return self.signal_number is not None

    def install(self) -> None:
        """Handle :data:`STOP_SIGNALS` from now on (main thread only)."""
        for number in STOP_SIGNALS:
            signal.signal(number, self)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, a signal only sets the flag; a signal that came meanwhile stops at the end."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
