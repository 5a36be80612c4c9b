"""``train.py --dry-run``: what the runs a command line describes would do, before any work."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core.files import read_csv
from ..core.models import create_model
from ..data.folders import discover
from ..page import markdown_table
from ..store.run_folder import HISTORY_CSV, LAST_CHECKPOINT, logits_path
from .config import TrainConfig
from .fold_setup import device_type_of
from .train_state import stages_of


def run_state(config: TrainConfig) -> tuple[str, int]:
    """("finished" | "resumable after epoch N" | "new", epochs done) of the run folder of ``config``."""
    history = config.run_dir() / HISTORY_CSV
    done = len(read_csv(history)) if history.is_file() else 0
    if logits_path(config.run_dir()).is_file():
        return "finished", done
    if (config.run_dir() / LAST_CHECKPOINT).is_file():
        return f"resumable after epoch {done}", done
    return "new", done


def max_epochs(config: TrainConfig) -> int:
    """The epochs of every stage together (early stopping may end each sooner)."""
    return sum(stage.epochs for stage in stages_of(config))


def training_images(config: TrainConfig) -> int | None:
    """About how many images one fold trains on: the images --data lists, less a fold's test
    share and the validation and calibration shares (None for the default synthetic set)."""
    if config.data is None:
        return None
    listed = len(discover(config.data, check_images=False, group_column=config.group_column))
    test_share = config.test_fraction if config.split == "holdout" else 1 / config.num_folds
    return round(listed * (1 - test_share) * (1 - config.val_fraction - config.cal_fraction))


def seconds_per_training_image(config: TrainConfig, classes: int = 2) -> float:
    """One training step on a random batch of ``--batch-size`` images at ``--img-size``, timed
    (the median of three after a warm-up), per image: what an epoch costs before any epoch ran.
    Random weights (nothing is downloaded); every layer trains, so a frozen stage costs less."""
    device = torch.device(device_type_of(config) if config.device == "auto" else config.device)
    model = create_model(config.arch, classes).to(device).train()
    images = torch.rand(config.batch_size, 3, config.img_size, config.img_size, device=device)
    if config.channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.to(memory_format=torch.channels_last)
    labels = torch.arange(config.batch_size, device=device) % classes
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / config.batch_size


def plan_table(configs: Sequence[TrainConfig]) -> str:
    """A Markdown row per run: architecture, fold, device, size, epochs, its state, and the
    expected time: the median of every timed epoch of this architecture under its --out (an upper
    bound, as early stopping may end it sooner), or before any, a timed training step times the
    fold's training images, times the epochs left (an estimate: without validation and loading)."""
    epochs = [
        float(row["seconds"])
        for history in sorted((Path(configs[0].out) / configs[0].member).glob("*/history.csv"))
        for row in read_csv(history)
    ]
    per_epoch = statistics.median(epochs) if epochs else None
    bound, source = "at most", "timed epochs"
    if per_epoch is None and (images := training_images(configs[0])) is not None:
        # Not a bound: validation, loading and evaluation come on top of the training steps.
        per_epoch = images * seconds_per_training_image(configs[0])
        bound, source = "about", "a timed training step, without validation and loading"
    rows = []
    for config in configs:
        state, done = run_state(config)
        left = 0 if state == "finished" else max(max_epochs(config) - done, 0)
        if state == "finished":
            expected = "-"
        elif per_epoch is not None:
            expected = f"{bound} {left * per_epoch / 60:.1f} min ({source})"
        else:
            expected = "unknown (no epoch timed yet)"
        device = device_type_of(config) if config.device == "auto" else config.device
        rows.append([config.member, config.fold, device, config.img_size, max_epochs(config), state, expected])
    header = ["arch", "fold", "device", "img_size", "max epochs", "state", "expected time"]
    return markdown_table(header, rows)
