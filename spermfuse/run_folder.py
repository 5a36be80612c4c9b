"""The files of a run folder, written and read only here.

``<out>/<arch>/fold<k>/`` (``holdout/`` for a holdout split) is written by the trainer and
read by fusion, evaluation, prediction, explanation and export:

- ``config.json``: every setting, the input normalisation, the data folder, the environment;
- ``history.csv``: one row per epoch (``HISTORY_COLUMNS``);
- ``best.pt``: the selected weights and what prediction needs to rebuild the network and
  its test-time preprocessing (:func:`checkpoint_metadata`); ``last.pt``: the resumable state;
- ``val_logits.npz`` / ``test_logits.npz``: the logits schema of DESIGN.md (``LOGITS_KEYS``),
  also what ``fuse.py`` writes for the fused models.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .checkpoint import CheckpointError, atomic_savez, atomic_write_csv, atomic_write_json, safe_np_load
from .errors import ConfigError, FusionError

if TYPE_CHECKING:
    from .config import TrainConfig
    from .transforms import Pipeline

LOGITS_KEYS = ("logits", "labels", "paths", "classes", "arch", "fold")


@dataclass
class LogitsSet:
    """One logits file (the schema of DESIGN.md)."""

    logits: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    classes: list[str]
    arch: str
    fold: int
    source: str = ""


def save_logits(path: Path, logits: np.ndarray, labels: np.ndarray, paths: Sequence[str], classes: Sequence[str], arch: str, fold: int) -> None:
    """Write a logits file (``LOGITS_KEYS``), atomically."""
    atomic_savez(
        path, logits=np.asarray(logits, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64), paths=np.array(list(paths), dtype=str),
        classes=np.array(list(classes), dtype=str), arch=np.array(arch), fold=np.array(fold, dtype=np.int64),
    )  # fmt: skip


def load_logits(path: str | Path) -> LogitsSet:
    """Read and check a logits file: every key present, shapes consistent, no NaN/inf."""
    try:
        arrays = safe_np_load(path)
    except CheckpointError as error:
        raise FusionError(str(error)) from None
    missing = [k for k in LOGITS_KEYS if k not in arrays]
    if missing:
        raise FusionError(f"{path}: not a logits file, missing {', '.join(missing)}")
    logits = arrays["logits"].astype(np.float32)
    labels = arrays["labels"].astype(np.int64)
    classes = [str(c) for c in arrays["classes"]]
    if logits.ndim != 2 or logits.shape != (len(labels), len(classes)) or len(arrays["paths"]) != len(labels):
        raise FusionError(f"{path}: logits {logits.shape}, {len(labels)} labels, {len(classes)} classes do not agree")
    if not np.isfinite(logits).all():
        raise FusionError(f"{path}: contains NaN or infinite logits; re-run the model that wrote it")
    return LogitsSet(logits, labels, arrays["paths"].astype(str), classes, str(arrays["arch"]), int(arrays["fold"]), str(path))


HISTORY_COLUMNS = [
    "epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_second",
    "peak_memory_mb", "skipped_steps",
]  # fmt: skip


def write_history(path: Path, history: list[dict]) -> None:
    atomic_write_csv(path, HISTORY_COLUMNS, ([row[c] for c in HISTORY_COLUMNS] for row in history))


def write_config(run_dir: Path, config: "TrainConfig", data_root: Path, normalization: dict, environment: dict, classes: Sequence[str]) -> None:
    """``config.json``: the settings as given, and what they resolved to."""
    atomic_write_json(
        run_dir / "config.json",
        {**asdict(config), "data_root": str(data_root), "normalization": normalization, "environment": environment, "classes": list(classes)},
    )


def data_root_of_run(run_dir: Path) -> Path:
    """The data folder a run trained on, from its ``config.json``."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: cannot read the run's settings ({error})") from None
    if "data_root" in config:
        return Path(config["data_root"])
    from .trainer import default_data_dir  # a run written before data_root was recorded

    return Path(config["data"]) if config.get("data") else default_data_dir(config.get("synthetic_scale"))


def checkpoint_metadata(config: "TrainConfig", classes: list[str], eval_pipeline: "Pipeline") -> dict:
    """What best.pt needs so that prediction rebuilds the exact test-time preprocessing.

    ``eval_pipeline`` is the description of that preprocessing, in order (resize, Otsu for
    method B, pad and fill, normalisation); prediction checks that it rebuilds the same.
    """
    return {
        "arch": config.arch, "classes": list(classes), "img_size": config.img_size, "mean": list(eval_pipeline.normalize.mean),
        "std": list(eval_pipeline.normalize.std), "pad_color": list(config.pad_color), "preprocess": config.preprocess,
        "otsu_foreground": config.otsu_foreground, "dropout": config.dropout, "padding": config.padding,
        "eval_pipeline": repr(eval_pipeline), "tta": config.tta,
    }  # fmt: skip
