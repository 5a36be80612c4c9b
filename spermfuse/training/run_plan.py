"""``train.py --dry-run``: what the runs a command line describes would do, before any work."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from ..core.files import read_csv
from ..page import markdown_table
from ..store.run_folder import HISTORY_CSV, LAST_CHECKPOINT, logits_path
from .config import TrainConfig
from .fold_setup import device_type_of


def run_state(config: TrainConfig) -> tuple[str, int]:
    """("finished" | "resumable after epoch N" | "new", epochs done) of the run folder of ``config``."""
    history = config.run_dir() / HISTORY_CSV
    done = len(read_csv(history)) if history.is_file() else 0
    if logits_path(config.run_dir()).is_file():
        return "finished", done
    if (config.run_dir() / LAST_CHECKPOINT).is_file():
        return f"resumable after epoch {done}", done
    return "new", done


def plan_table(configs: Sequence[TrainConfig]) -> str:
    """A Markdown row per run: architecture, fold, device, size, epochs, its state, and the
    expected time (the median of every timed epoch of this architecture under its --out, times
    the epochs left: an upper bound, as early stopping may end it sooner)."""
    epochs = [
        float(row["seconds"])
        for history in sorted((Path(configs[0].out) / configs[0].arch).glob("*/history.csv"))
        for row in read_csv(history)
    ]
    per_epoch = statistics.median(epochs) if epochs else None
    rows = []
    for config in configs:
        state, done = run_state(config)
        left = 0 if state == "finished" else max(config.epochs - done, 0)
        if state == "finished":
            expected = "-"
        elif per_epoch is not None:
            expected = f"at most {left * per_epoch / 60:.1f} min"
        else:
            expected = "unknown (no epoch timed yet)"
        device = device_type_of(config) if config.device == "auto" else config.device
        rows.append([config.arch, config.fold, device, config.img_size, config.epochs, state, expected])
    header = ["arch", "fold", "device", "img_size", "max epochs", "state", "expected time"]
    return markdown_table(header, rows)
