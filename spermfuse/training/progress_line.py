"""What the command-line programs show on an interactive terminal while they work: a download's
megabytes, a training run's live line (fold, epoch, batch, speed, ETAs) and a timing round
counter. Each writes to standard error only when it is a terminal; piped, the log says it all.
"""

from __future__ import annotations

import logging
import sys
import time

from .config import TrainConfig
from .fold_setup import device_type_of

log = logging.getLogger(__name__)


class DownloadLine:
    """Megabytes downloaded so far, on an interactive terminal; silent otherwise."""

    def __call__(self, done: int, total: int | None) -> None:
        if sys.stderr.isatty():
            of = f" of {total / 1e6:.1f}" if total else ""
            sys.stderr.write(f"\r  downloaded {done / 1e6:.1f}{of} MB" + ("\n" if done == total else ""))
            sys.stderr.flush()


def clock(seconds: float) -> str:
    """``1:02`` or ``1:45:00``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


GPU_SIZED = 200  # px: at this input size and above a CPU epoch of the paper's data takes hours


class ProgressLine:
    """Where the run stands: on an interactive terminal one updating line
    (``fold 2/5 · epoch 3/100 · batch 40/110 · 12 img/s · epoch ETA 1:02 · run ETA <= 1:45:00``);
    when piped, the per-epoch log lines only. On a CPU with a GPU-sized run it also logs, once,
    the time the first steps measured, extrapolated to an epoch and to the run's maximum."""

    MEASURED_STEPS = 5

    def __init__(self, config: TrainConfig) -> None:
        self.live = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.fold, self.epochs = config.fold, config.epochs
        self.folds = config.num_folds if config.split == "kfold" else 1
        self.epoch, self.warned = 1, False
        cpu = device_type_of(config) == "cpu" if config.device == "auto" else config.device == "cpu"
        self.warn_cpu = cpu and config.img_size >= GPU_SIZED

    def epoch_done(self, row: dict) -> None:
        """After an epoch (FoldTrainer's on_epoch_end): the next one is row's epoch + 1."""
        self.epoch = row["epoch"] + 1

    def __call__(self, batch: int, batches: int, rate: float) -> None:
        if batch == 1:
            self.start = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        epoch_seconds = elapsed / batch * batches
        if self.warn_cpu and not self.warned and batch == min(self.MEASURED_STEPS, batches):
            self.warned = True
            log.warning(
                "on this CPU an epoch takes about %s (measured over %d steps), this run up to %s (%d epochs max); "
                "for a CPU recipe use --preset demo --arch efficientnet_tiny, or bash demo.sh --data DIR",
                clock(epoch_seconds),
                batch,
                clock(epoch_seconds * self.epochs),
                self.epochs,
            )
        if not self.live:
            return
        left = epoch_seconds - elapsed
        run_left = left + epoch_seconds * max(self.epochs - self.epoch, 0)
        end = "\n" if batch == batches else ""
        sys.stderr.write(
            f"\r  fold {self.fold}/{self.folds} · epoch {self.epoch}/{self.epochs} · batch {batch}/{batches} · "
            f"{rate:.0f} img/s · epoch ETA {clock(left)} · run ETA <= {clock(run_left)}   " + end
        )
        sys.stderr.flush()


def round_counter(done: int, rounds: int) -> None:
    """``round 40/200`` on an interactive terminal, silent otherwise."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  round {done}/{rounds}" + ("\n" if done == rounds else ""))
        sys.stderr.flush()
