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

import hashlib
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
SPLIT_KEY = "split"  # optional in a logits file: the digest of the split its model trained on (split_digest)


def split_digest(classes: Sequence[str], train: Sequence[str], val: Sequence[str], test: Sequence[str]) -> str:
    """SHA-256 of the class list, the images a run learned from (train and validation) and
    those it was tested on. How the learning part divides into train and validation is left
    out: it follows from --seed and --val-fraction, which --resume checks among the settings,
    and two members of a fusion may differ there without any leak.

    Recorded in last.pt, best.pt and the logits files; --resume, fusion, prediction and export
    refuse runs whose digests differ where they must agree."""
    text = json.dumps({"classes": list(classes), "learned_from": sorted([*train, *val]), "tested_on": sorted(test)})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    split: str = ""  # split_digest of the run that wrote it ("" when not recorded)


def save_logits(path: Path, logits: np.ndarray, labels: np.ndarray, paths: Sequence[str], classes: Sequence[str], arch: str, fold: int, split: str = "") -> None:
    """Write a logits file (``LOGITS_KEYS``, and ``SPLIT_KEY`` when known), atomically."""
    atomic_savez(
        path, logits=np.asarray(logits, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64), paths=np.array(list(paths), dtype=str),
        classes=np.array(list(classes), dtype=str), arch=np.array(arch), fold=np.array(fold, dtype=np.int64),
        **({SPLIT_KEY: np.array(split)} if split else {}),
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
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise FusionError(f"{path}: labels outside 0..{len(classes) - 1} (the class list has {len(classes)}); re-run the model that wrote it")
    fold = arrays["fold"]
    if fold.shape != () or fold.dtype.kind not in "iu":
        raise FusionError(f"{path}: fold {fold!r} is not one integer; re-run the model that wrote it")
    split = str(arrays[SPLIT_KEY]) if SPLIT_KEY in arrays else ""
    return LogitsSet(logits, labels, arrays["paths"].astype(str), classes, str(arrays["arch"]), int(fold), str(path), split)


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
    if "data_root" not in config:
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: records no data folder (written before v0.2); retrain the run")
    return Path(config["data_root"])


def checkpoint_metadata(config: "TrainConfig", classes: list[str], eval_pipeline: "Pipeline", split: str) -> dict:
    """What best.pt needs so that prediction rebuilds the exact test-time preprocessing.

    ``eval_pipeline`` is the description of that preprocessing, in order (resize, Otsu for
    method B, pad and fill, normalisation); prediction checks that it rebuilds the same.
    """
    return {
        "arch": config.arch, "classes": list(classes), "img_size": config.img_size, "mean": list(eval_pipeline.normalize.mean),
        "std": list(eval_pipeline.normalize.std), "pad_color": list(config.pad_color), "preprocess": config.preprocess,
        "otsu_foreground": config.otsu_foreground, "dropout": config.dropout, "padding": config.padding,
        "eval_pipeline": repr(eval_pipeline), "tta": config.tta, "split": split,
    }  # fmt: skip
