"""Fold assignment, the validation split, the holdout split, and ``folds.csv``.

Folds are stratified by class. When the samples carry groups (patient, slide or sample
ids, ``Samples.groups``), every split keeps each group on one side: folds come from
scikit-learn's ``StratifiedGroupKFold``, the validation subset and method B's holdout
split take whole groups, and :func:`check_group_leakage` refuses any split in which a
group appears in more than one of train, validation and test. Images of one patient on
both sides inflate the scores (by about 0.04 AUROC on C-NMC in a published comparison).
"""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import DataError
from ..core.files import atomic_write_csv, read_csv
from .folders import Samples

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Indices into Samples for training, validation (model selection), test, and calibration:
    cells no part of training sees, held out for the promises fitted after it (temperatures,
    the referral certificate, prediction sets); empty without ``--cal-fraction``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cal: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))

    def parts(self) -> dict[str, np.ndarray]:
        """The four parts by name."""
        return {"train": self.train, "validation": self.val, "test": self.test, "calibration": self.cal}


# The calibration cells are drawn with their own seed offset, so that --cal-fraction 0 leaves
# every other split exactly as it was.
CAL_SEED_OFFSET = 1000


def _check_groups_can_be_split(labels: np.ndarray, classes: Sequence[str], groups: np.ndarray, k: int) -> None:
    distinct = np.unique(groups)
    if len(distinct) < k:
        raise DataError(
            f"{len(distinct)} groups for {k} folds: every fold needs its own groups; use --num-folds {max(len(distinct), 2)} or fewer"
        )
    for c, name in enumerate(classes):
        members = groups[labels == c]
        if len(members) and len(np.unique(members)) == 1:
            raise DataError(
                f"class {name!r}: all its images share one group ({str(members[0])!r}), so it cannot be stratified over "
                "group-disjoint folds; add images of other groups or leave the class out"
            )


def make_folds(
    labels: np.ndarray, classes: Sequence[str], k: int = 5, seed: int = 42, groups: np.ndarray | None = None
) -> np.ndarray:
    """Stratified k-fold assignment (1-based test fold per sample), reproducible from ``seed``.

    With ``groups``: stratified *group* k-fold, so no group is in two folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(labels, minlength=len(classes))
    for name, n in zip(classes, counts):
        if 0 < n < k:
            raise DataError(f"class {name!r} has {n} images, fewer than the {k} folds; add images or use fewer folds")
    folds = np.zeros(len(labels), dtype=np.int64)
    if groups is None:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    else:
        _check_groups_can_be_split(labels, classes, groups, k)
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels, groups
        )
    for fold, (_, test_idx) in enumerate(splits, start=1):
        folds[test_idx] = fold
    return folds


def write_folds(path: Path, samples: Samples, folds: np.ndarray) -> None:
    """Write ``path,label,fold`` (and ``group`` when the samples have groups) atomically."""
    header = ["path", "label", "fold"] + (["group"] if samples.groups is not None else [])
    rows = ([p, samples.classes[y], int(f)] for p, y, f in zip(samples.paths, samples.labels, folds))
    if samples.groups is not None:
        rows = (row + [g] for row, g in zip(rows, samples.groups))
    atomic_write_csv(path, header, rows)


RESPLIT_ADVICE = "delete it to re-split (every run under that --out then trains anew: their splits no longer match), or point --out elsewhere"


def _folds_rows(path: Path) -> list[dict[str, str]]:
    """folds.csv's rows, its columns and cells checked: one line naming the row otherwise."""
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable folds.csv ({error}); {RESPLIT_ADVICE}") from None
    columns = set(rows[0]) if rows else set()
    missing = [name for name in ("path", "label", "fold") if name not in columns]
    if missing:
        raise DataError(f"{path}: lacks column(s) {', '.join(missing)}; {RESPLIT_ADVICE}")
    for line, row in enumerate(rows, start=2):
        if not (row["fold"] or "").strip().isdigit():
            raise DataError(
                f"{path}:{line}: fold {row['fold']!r} is not a fold number; fix the row or {RESPLIT_ADVICE}"
            )
    return rows


def read_folds(path: Path, samples: Samples, k: int | None = None) -> np.ndarray:
    """Read a folds.csv and check it describes exactly these samples (and their groups), each
    once, in folds 1..k (every fold used)."""
    rows_list = _folds_rows(path)
    rows = {row["path"]: row for row in rows_list}
    if len(rows) != len(rows_list):
        seen = [row["path"] for row in rows_list]
        duplicate = next(p for p in seen if seen.count(p) > 1)
        raise DataError(f"{path}: lists {duplicate} more than once; {RESPLIT_ADVICE}")
    if set(rows) != set(samples.paths):
        raise DataError(f"{path}: lists other images than the data set; {RESPLIT_ADVICE}")
    for rel, y in zip(samples.paths, samples.labels):
        if rows[rel]["label"] != samples.classes[y]:
            raise DataError(
                f"{path}: {rel} is labelled {rows[rel]['label']!r} there but {samples.classes[y]!r} in the data; {RESPLIT_ADVICE}"
            )
    recorded = [rows[rel].get("group") for rel in samples.paths]
    given = list(samples.groups) if samples.groups is not None else [None] * len(samples)
    if recorded != given:
        raise DataError(f"{path}: was split with other groups than the data has now; {RESPLIT_ADVICE}")
    folds = np.array([int(rows[p]["fold"]) for p in samples.paths], dtype=np.int64)
    if k is not None:
        outside = [(p, int(f)) for p, f in zip(samples.paths, folds) if not 1 <= f <= k]
        if outside:
            raise DataError(
                f"{path}: {outside[0][0]} is in fold {outside[0][1]}, outside 1..{k} (--num-folds {k}); fix the row or {RESPLIT_ADVICE}"
            )
        unused = sorted(set(range(1, k + 1)) - set(folds.tolist()))
        if unused:
            raise DataError(f"{path}: fold(s) {unused} hold no image although --num-folds is {k}; {RESPLIT_ADVICE}")
    return folds


def groups_per_fold(folds_csv: Path) -> dict[int, dict[str, int]] | None:
    """From a folds.csv with groups: per test fold, the number of distinct groups in all
    (key ``"all"``) and in each class; None when the file has no groups."""
    rows = _folds_rows(folds_csv)
    if not rows or "group" not in rows[0]:
        return None
    found: dict[int, dict[str, set]] = {}
    for row in rows:
        per_fold = found.setdefault(int(row["fold"]), {"all": set()})
        per_fold["all"].add(row["group"])
        per_fold.setdefault(row["label"], set()).add(row["group"])
    return {
        fold: {key: len(groups) for key, groups in sorted(counts.items())} for fold, counts in sorted(found.items())
    }


def group_of_path(folds_csv: Path) -> dict[str, str] | None:
    """From a folds.csv with groups: each image path's group (patient, slide or sample); None
    when the file is missing or has no groups."""
    if not folds_csv.exists():
        return None
    rows = _folds_rows(folds_csv)
    if not rows or "group" not in rows[0]:
        return None
    return {row["path"]: row["group"] for row in rows}


def load_or_create_folds(samples: Samples, folds_csv: Path, k: int = 5, seed: int = 42) -> np.ndarray:
    """The fold of every sample: from the layout, else from ``folds_csv``, else made and saved there.

    Written once and reused, so every model trained on the data sees identical splits.
    """
    if samples.folds is not None:
        folds = samples.folds
    elif folds_csv.exists():
        folds = read_folds(folds_csv, samples, k)
        apart = [(i, j) for i, j in samples.copies.items() if folds[i] != folds[j]]
        if apart:
            i, j = apart[0]
            raise DataError(
                f"{folds_csv}: puts {samples.paths[i]} (fold {folds[i]}) and its duplicate {samples.paths[j]} (fold "
                f"{folds[j]}) in different folds ({len(apart)} such images; made before duplicates were found): "
                "delete folds.csv to re-split (every run under that --out then trains anew)"
            )
    else:
        folds = make_folds(samples.labels, samples.classes, k, seed, samples.groups)
        for copy, original in samples.copies.items():  # an image and its copy are never on both sides
            folds[copy] = folds[original]
        write_folds(folds_csv, samples, folds)
        kind = (
            f"stratified by class and disjoint in {len(np.unique(samples.groups))} groups"
            if samples.groups is not None
            else "stratified"
        )
        log.info("wrote %s (%d-fold %s, seed %d)", folds_csv, k, kind, seed)
    return folds


def stratified_subset(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, subset) with ``fraction`` of each class in the subset.

    With ``fraction > 0``, every class with at least two samples gives at least one to the
    subset, so small classes are still validated on; single-sample classes stay in the rest.
    ``fraction == 0`` gives an empty subset.
    """
    rng = np.random.default_rng(seed)
    subset = []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c]
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        n = min(max(n, 1), len(members) - 1) if len(members) >= 2 and fraction > 0 else 0
        subset.append(members[:n])
    subset = np.sort(np.concatenate(subset)) if subset else np.array([], dtype=np.int64)
    rest = np.setdiff1d(indices, subset)
    return rest, subset


def group_subset(
    indices: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, subset) by whole groups, about ``fraction`` in the subset, stratified.

    One fold of a stratified group k-fold with k = round(1 / fraction); with fewer groups
    than that, k is the group count and the subset is larger than asked (logged).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if fraction <= 0:
        return indices, np.array([], dtype=np.int64)
    available = len(np.unique(groups[indices]))
    if available < 2:
        raise DataError(
            f"only {available} group in the part to split; a group-disjoint validation or test set needs at least 2"
        )
    k = min(max(2, int(round(1 / fraction))), available)
    if k < round(1 / fraction):
        log.warning(
            "only %d groups: the group-disjoint subset takes about 1/%d of the images, not %.2f", available, k, fraction
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class smaller than k is expected here (rare classes, few groups): it goes wholly to one side.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, chosen = next(splitter.split(np.zeros(len(indices)), labels[indices], groups[indices]))
    subset = np.sort(indices[chosen])
    return np.setdiff1d(indices, subset), subset


def keep_copies_together(
    rest: np.ndarray, subset: np.ndarray, copies: dict[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each duplicate (``Samples.copies``) moved to the side of its group's first image, so one
    picture is never on both sides of a split."""
    if not copies:
        return rest, subset
    chosen, present = set(subset.tolist()), set(rest.tolist()) | set(subset.tolist())
    for copy, first in copies.items():
        if copy in present and first in present:
            (chosen.add if first in chosen else chosen.discard)(copy)
    subset = np.array(sorted(chosen), dtype=np.int64)
    return np.setdiff1d(np.array(sorted(present), dtype=np.int64), subset), subset


def _subset(
    indices: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    seed: int,
    copies: dict[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    if groups is None:
        return keep_copies_together(*stratified_subset(indices, labels, fraction, seed), copies)
    return keep_copies_together(*group_subset(indices, labels, groups, fraction, seed), copies)


HOLDOUT_SEED_OFFSET = 2000  # the calibration holdout's own draw, the same for every fold


def calibration_holdout(
    labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int, copies: dict[int, int] | None = None
) -> np.ndarray:
    """The indices of ``--cal-holdout``: a stratified (group-disjoint with ``groups``) share of all
    images, drawn with the run's seed alone, so every fold reserves the same cells."""
    if fraction <= 0:
        return np.array([], dtype=np.int64)
    return _subset(np.arange(len(labels)), labels, groups, fraction, seed + HOLDOUT_SEED_OFFSET, copies)[1]


def fold_split(
    folds: np.ndarray,
    labels: np.ndarray,
    fold: int,
    val_fraction: float = 0.1,
    seed: int = 42,
    groups: np.ndarray | None = None,
    cal_fraction: float = 0.0,
    cal_holdout: float = 0.0,
    copies: dict[int, int] | None = None,
) -> Split:
    """Fold ``fold`` is the test set; a stratified ``cal_fraction`` of the rest is held out for
    calibration, then a stratified ``val_fraction`` of what remains is the validation set.

    With ``cal_holdout`` instead, a stratified share of *all* images (:func:`calibration_holdout`)
    is every fold's calibration set and no fold's train, validation or test cells, so the
    folds' models never saw it and their average can be calibrated on it.

    The test fold is never used for early stopping or model selection. With ``groups`` the
    validation and calibration sets take whole groups, and the split is checked for leakage;
    ``copies`` (duplicates) stay on one side of each.
    """
    if fold not in set(folds.tolist()):
        raise DataError(f"fold {fold} does not exist; folds are {sorted(set(folds.tolist()))}")
    reserved = calibration_holdout(labels, groups, cal_holdout, seed, copies)
    test = np.setdiff1d(np.flatnonzero(folds == fold), reserved)
    rest = np.setdiff1d(np.flatnonzero(folds != fold), reserved)
    rest, cal = _subset(rest, labels, groups, cal_fraction, seed + CAL_SEED_OFFSET + fold, copies)
    if len(reserved):
        cal = reserved
    train, val = _subset(rest, labels, groups, val_fraction, seed + fold, copies)
    split = Split(train, val, test, cal)
    if groups is not None:
        check_group_leakage(split, groups)
        warn_few_calibration_groups(split, groups, f"fold {fold}")
    return split


def holdout_split(
    labels: np.ndarray,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    groups: np.ndarray | None = None,
    cal_fraction: float = 0.0,
    copies: dict[int, int] | None = None,
) -> Split:
    """Stratified train/val/test split (method B uses 70/15/15), with ``cal_fraction`` of the whole
    held out for calibration first; group-disjoint with ``groups``."""
    everything = np.arange(len(labels))
    everything, cal = _subset(everything, labels, groups, cal_fraction, seed + CAL_SEED_OFFSET, copies)
    rest, test = _subset(everything, labels, groups, test_fraction / (1.0 - cal_fraction), seed, copies)
    train, val = _subset(rest, labels, groups, val_fraction / (1.0 - test_fraction - cal_fraction), seed + 1, copies)
    split = Split(train, val, test, cal)
    if groups is not None:
        check_group_leakage(split, groups)
        warn_few_calibration_groups(split, groups, "the holdout split")
    return split


MIN_CALIBRATION_GROUPS = 30


def warn_few_calibration_groups(split: Split, groups: np.ndarray, where: str) -> None:
    """With groups, the promises fitted on the calibration cells (issue 23: certified referral,
    prediction sets) are about new *groups*: cells of one patient are not exchangeable with
    another's. Under ``MIN_CALIBRATION_GROUPS`` groups that is a weak basis: said, not refused."""
    count = len(np.unique(groups[split.cal])) if len(split.cal) else 0
    if 0 < count < MIN_CALIBRATION_GROUPS:
        log.warning(
            "%s: the calibration cells come from %d groups (fewer than %d); a certified threshold or prediction set "
            "fitted on them holds for new cells of these patients, and for new patients only as far as %d are "
            "representative; a larger --cal-fraction or more groups make it hold for new patients",
            where,
            count,
            MIN_CALIBRATION_GROUPS,
            count,
        )


def check_group_leakage(split: Split, groups: np.ndarray) -> None:
    """Refuse a split in which a group (patient, slide, sample) is in more than one of train, validation, test and calibration."""
    parts = {name: set(groups[indices].tolist()) for name, indices in split.parts().items()}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(parts[a] & parts[b])
            if shared:
                raise DataError(
                    f"group {shared[0]!r} is in both {a} and {b} ({len(shared)} shared groups): the split leaks; delete folds.csv to re-split by group (every run under that --out then trains anew)"
                )
