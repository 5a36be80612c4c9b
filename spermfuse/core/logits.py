"""Logits files: one model's (or one fusion's) outputs on one split of one fold, with the
labels, image paths and classes that give them meaning (docs/DESIGN.md, "On-disk formats"),
and the digest of the split its model learned from, so that members of a fusion are checked
to have learned from the same images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FusionError
from .files import CheckpointError, atomic_savez, safe_np_load

LOGITS_KEYS = ("logits", "labels", "paths", "classes", "arch", "fold")
SPLIT_KEY = "split"  # optional in a logits file: the digest of the split its model trained on (split_digest)


def split_digest(
    classes: Sequence[str], train: Sequence[str], val: Sequence[str], test: Sequence[str], cal: Sequence[str] = ()
) -> str:
    """SHA-256 of the class list, the images a run learned from (train and validation) and
    those it was tested on. How the learning part divides into train and validation is left
    out: it follows from --seed and --val-fraction, which --resume checks among the settings,
    and two members of a fusion may differ there without any leak.

    Recorded in last.pt, best.pt and the logits files; --resume, fusion, prediction and export
    refuse runs whose digests differ where they must agree."""
    record = {"classes": list(classes), "learned_from": sorted([*train, *val]), "tested_on": sorted(test)}
    if cal:  # the calibration cells, held out from learning (--cal-fraction)
        record["calibrated_on"] = sorted(cal)
    text = json.dumps(record)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class LogitsSet:
    """One logits file (docs/DESIGN.md, "On-disk formats")."""

    logits: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    classes: list[str]
    arch: str
    fold: int
    source: str = ""
    split: str = ""  # split_digest of the run that wrote it ("" when not recorded)


def save_logits(
    path: Path,
    logits: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    classes: Sequence[str],
    arch: str,
    fold: int,
    split: str = "",
) -> None:
    """Write a logits file (``LOGITS_KEYS``, and ``SPLIT_KEY`` when known), atomically."""
    atomic_savez(
        path,
        logits=np.asarray(logits, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        paths=np.array(list(paths), dtype=str),
        classes=np.array(list(classes), dtype=str),
        arch=np.array(arch),
        fold=np.array(fold, dtype=np.int64),
        **({SPLIT_KEY: np.array(split)} if split else {}),
    )


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
        raise FusionError(
            f"{path}: labels outside 0..{len(classes) - 1} (the class list has {len(classes)}); re-run the model that wrote it"
        )
    fold = arrays["fold"]
    if fold.shape != () or fold.dtype.kind not in "iu":
        raise FusionError(f"{path}: fold {fold!r} is not one integer; re-run the model that wrote it")
    split = str(arrays[SPLIT_KEY]) if SPLIT_KEY in arrays else ""
    return LogitsSet(
        logits, labels, arrays["paths"].astype(str), classes, str(arrays["arch"]), int(fold), str(path), split
    )


def align(sets: Sequence[LogitsSet]) -> list[LogitsSet]:
    """Reorder every set to the first one's sample order, joining on ``paths``.

    Refuses sets whose classes differ, whose samples differ, whose labels disagree, or whose
    models learned from other images (:func:`split_digest`).
    """
    reference = sets[0]
    order = {p: i for i, p in enumerate(reference.paths)}
    aligned = [reference]
    for other in sets[1:]:
        if other.classes != reference.classes:
            raise FusionError(
                f"{other.source}: classes differ from {reference.source}; both must be trained on the same class list"
            )
        if len(other.paths) != len(reference.paths) or set(other.paths) != set(order):
            raise FusionError(
                f"{other.source}: holds other samples than {reference.source}; were both trained on the same folds.csv?"
            )
        position = np.argsort([order[p] for p in other.paths])
        moved = replace(
            other, logits=other.logits[position], labels=other.labels[position], paths=other.paths[position]
        )
        if not np.array_equal(moved.labels, reference.labels):
            raise FusionError(f"{other.source}: labels differ from {reference.source} for the same images")
        if other.split and reference.split and other.split != reference.split:
            raise FusionError(
                f"{other.source}: fold {other.fold} learned from other images than {reference.source} "
                "(folds.csv or the data changed between them); retrain one of them on the same folds.csv"
            )
        aligned.append(moved)
    return aligned


def pooled(folds: Sequence[LogitsSet]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of all folds together."""
    return np.concatenate([f.labels for f in folds]), np.concatenate([f.logits for f in folds])
