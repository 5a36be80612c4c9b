"""Finding samples, fold splits, class weights, the Dataset and the loaders.

Three layouts are read (``discover``):

- ImageFolder: ``root/<Class>/*.png``;
- official folds: ``root/fold<k>/{train,test}/<Class>/*`` (how Hi-LabSpermMorpho is shared);
  each image is tested in exactly one fold, so samples are read from the ``test`` folders;
- a CSV manifest ``path,label[,fold][,group]`` (paths relative to the CSV's folder).

Groups (patient, slide or sample ids) come from the manifest's ``group`` column (another
name with ``group_column``) or, for folder layouts, from the first capture group of
``group_pattern`` searched in each file name. With groups, splits keep every group on one
side (``splits.py``).

Classes are always sorted by name; the class list travels with every output.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..core.errors import DataError
from .duplicates import POLICIES, Fingerprinter, resolve
from .images import IMAGE_EXTENSIONS, is_image_file, read_image
from .reading import read_every_image

log = logging.getLogger(__name__)

_FOLD_DIR = re.compile(r"^fold(\d+)$")


@dataclass
class Samples:
    """Image paths (relative to ``root``), integer labels, sorted class names, optional folds."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    folds: np.ndarray | None = None  # 1-based test fold of each sample, when the layout has one
    groups: np.ndarray | None = None  # patient / slide / sample id of each sample (str), when known
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) with on_error="skip"
    copies: dict[int, int] = field(default_factory=dict)  # a duplicate's index -> its group's first image

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def absolute_paths(self) -> list[Path]:
        """Each image's full path (``paths`` are relative to ``root``)."""
        return [self.root / p for p in self.paths]

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {name: int(n) for name, n in zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)))}


def _list_class_folders(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            classes[child.name] = sorted(p for p in child.iterdir() if p.is_file() and is_image_file(p))
    return classes


def _from_class_folders(root: Path, folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[str]]:
    found = _list_class_folders(folder)
    paths, names = [], []
    for name, files in found.items():
        if not files:
            raise DataError(
                f"{folder / name}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        if classes is not None and name not in classes:
            raise DataError(f"{folder / name}: class {name!r} is not in the other folds' classes {classes}")
        paths += [p.relative_to(root).as_posix() for p in files]
        names += [name] * len(files)
    return paths, names


def _discover_folds(root: Path, fold_dirs: dict[int, Path]) -> tuple[list[str], list[str], list[int]]:
    expected = list(range(1, len(fold_dirs) + 1))
    if sorted(fold_dirs) != expected:
        raise DataError(f"{root}: fold folders must be fold1..fold{len(fold_dirs)}, found {sorted(fold_dirs)}")
    paths, names, folds = [], [], []
    for k, fold_dir in sorted(fold_dirs.items()):
        test_dir = fold_dir / "test"
        if not test_dir.is_dir():
            raise DataError(
                f"{fold_dir}: missing 'test' folder; the official-folds layout is fold<k>/{{train,test}}/<Class>/"
            )
        fold_paths, fold_names = _from_class_folders(root, test_dir)
        paths += fold_paths
        names += fold_names
        folds += [k] * len(fold_paths)
    return paths, names, folds


def _check_manifest_row(
    csv_path: Path, line: int, row: dict, allow_outside_root: bool, first_line: dict[str, int]
) -> None:
    """One manifest row: a label, an image file inside the manifest's folder, listed once."""
    root = csv_path.parent
    path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
    if not path or not label:
        raise DataError(
            f"{csv_path}:{line}: empty {'path' if not path else 'label'}; every row needs an image path and its class"
        )
    if path in first_line:
        raise DataError(
            f"{csv_path}:{line}: {path!r} is listed again (first on line {first_line[path]}); list each image once"
        )
    first_line[path] = line
    if not allow_outside_root and not (root / path).resolve().is_relative_to(root.resolve()):
        raise DataError(
            f"{csv_path}:{line}: {path!r} lies outside the manifest's folder; move the manifest up, or allow it with --allow-outside-root"
        )
    if not is_image_file(Path(path)):
        raise DataError(f"{csv_path}:{line}: {path!r} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if not (root / path).is_file():
        raise DataError(f"{csv_path}:{line}: image {path!r} not found (paths are relative to the CSV's folder)")


def _discover_manifest(
    csv_path: Path, group_column: str, allow_outside_root: bool = False
) -> tuple[Path, list[str], list[str], list[int] | None, list[str] | None]:
    root = csv_path.parent
    with open(
        csv_path, newline="", encoding="utf-8-sig"
    ) as handle:  # -sig: a manifest saved by Excel starts with a BOM
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        unknown = set(columns) - {"path", "label", "fold", group_column}
        if "path" not in columns or "label" not in columns or unknown:
            raise DataError(
                f"{csv_path}: columns must be path,label[,fold][,{group_column}]; found {','.join(columns) or 'none'} (--group-column names the group column)"
            )
        rows = list(reader)
    if not rows:
        raise DataError(f"{csv_path}: manifest lists no images")
    paths, names, folds = [], [], []
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        _check_manifest_row(csv_path, line, row, allow_outside_root, first_line)
        paths.append(row["path"].strip())
        names.append(row["label"].strip())
        if "fold" in columns:
            try:
                folds.append(int(row["fold"]))
            except ValueError:
                raise DataError(f"{csv_path}:{line}: fold {row['fold']!r} is not an integer") from None
        if group_column in columns and not (row[group_column] or "").strip():
            raise DataError(
                f"{csv_path}:{line}: empty {group_column!r} for {row['path']!r}; every image needs its group (patient, slide or sample)"
            )
    groups = [row[group_column].strip() for row in rows] if group_column in columns else None
    return root, paths, names, (folds if "fold" in columns else None), groups


def settle_duplicates(
    root: Path, paths: list[str], names: list[str], fingerprints: Fingerprinter, policy: str = "error"
) -> tuple[list[int], dict[int, int]]:
    """``--duplicates``: the indices of the images to keep and ``{copy: first image}`` among them
    (docs: ``duplicates.py``). A group across classes stops here, naming two of its files, unless
    ``policy`` drops (``drop-conflicts``) or keeps (``keep``) such groups."""
    if policy not in POLICIES:
        raise DataError(f"--duplicates {policy}: choose one of {', '.join(POLICIES)}")
    groups = fingerprints.groups(lambda i: read_image(root / paths[i])[0])
    report, conflict = resolve(groups, names, len(paths), policy)
    if conflict is not None:
        pairs = [(i, j) for i in conflict.members for j in conflict.members if i < j and names[i] != names[j]]
        identical = [(i, j) for i, j in pairs if any(i in same and j in same for same in conflict.identical)]
        first, other = (identical or pairs)[0]
        kind = "pixel-identical" if identical else "near-identical"
        raise DataError(
            f"{root / paths[other]}: the same image as {root / paths[first]} ({kind}), but labelled {names[other]!r} "
            f"and {names[first]!r} ({len(report.conflicts)} such groups); remove the wrong copy, or give --duplicates "
            "drop-conflicts (drops every image of such a group) or --duplicates keep"
        )
    if report.groups:
        done = {"drop-conflicts": "dropped", "keep": "kept"}[policy] if report.conflicts else ""
        log.warning(
            "%s%s; each group is kept on one side of every split",
            report.summary(),
            f" ({done}: {sum(len(g.members) for g in report.conflicts)} files)" if done else "",
        )
    return report.keep, report.copies


def warn_straddling_copies(folds: Sequence[int], paths: Sequence[str], copies: dict[int, int]) -> None:
    """The data's own folds (fold<k>/ folders, a manifest's fold column) are kept as given; a
    duplicate in another fold than its first image makes those folds' test scores optimistic."""
    apart = [(i, j) for i, j in copies.items() if folds[i] != folds[j]]
    if apart:
        i, j = apart[0]
        log.warning(
            "the data's own folds put %d duplicate(s) in another fold than their first image (%s in fold %d, %s in "
            "fold %d): those folds' test scores are optimistic; move them into one fold",
            len(apart),
            paths[i],
            folds[i],
            paths[j],
            folds[j],
        )


def groups_from_pattern(paths: Sequence[str], pattern: str) -> list[str]:
    """The first capture group of ``pattern`` searched in each file name (e.g. ``patient(\\d+)``)."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise DataError(f"--group-pattern '{pattern}': not a regular expression ({error})") from None
    if compiled.groups < 1:
        raise DataError(f"--group-pattern '{pattern}': needs a capture group, e.g. 'patient(\\d+)'")
    groups = []
    for rel in paths:
        match = compiled.search(Path(rel).name)
        if match is None or not match.group(1):
            raise DataError(
                f"{rel}: --group-pattern '{pattern}' finds no group in this file name; fix the pattern or the name"
            )
        groups.append(match.group(1))
    return groups


SPLIT_FOLDER_NAMES = {"train", "test", "val", "valid", "validation"}


def refuse_split_folders(root: Path) -> None:
    """A ``train/`` + ``test/`` layout is not two classes: say what to give instead."""
    names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if len(names) >= 2 and names <= SPLIT_FOLDER_NAMES and "train" in names:
        raise DataError(
            f"{root}: holds {', '.join(sorted(names))}/ split folders, not classes; spermfuse makes its own folds: give "
            f"--data {root / 'train'} (and predict on the rest with fuse.py --predict), or keep your split as "
            f"{root}/fold1/train/<Class>/ and {root}/fold1/test/<Class>/"
        )


def discover(
    root: str | os.PathLike,
    on_error: Literal["raise", "skip"] = "raise",
    check_images: bool = True,
    group_column: str = "group",
    group_pattern: str | None = None,
    allow_outside_root: bool = False,
    duplicates: str = "error",
    processes: int | None = None,
) -> Samples:
    """Find the samples of a data set in any of the three layouts (see module docstring).

    With ``check_images`` every image is decoded once so that a bad file fails here,
    naming the file, instead of in the middle of training. ``on_error="skip"`` drops
    unreadable files and lists them in ``Samples.skipped``. Groups: a manifest's
    ``group_column``, or ``group_pattern`` on the file names. The decoded images are also
    compared (``duplicates.py``): copies are tied to one side of every split, and a copy under
    another class is handled by ``duplicates`` (:func:`settle_duplicates`). ``processes``: how
    many processes decode the images (default: ``reading.reading_processes``).
    """
    root = Path(root)
    folds: list[int] | None = None
    groups: list[str] | None = None
    if root.is_file() and root.suffix.lower() == ".csv":
        root, paths, names, folds, groups = _discover_manifest(root, group_column, allow_outside_root)
    elif not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass an ImageFolder, fold<k>/ folders or a .csv manifest")
    else:
        fold_dirs = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _FOLD_DIR.match(p.name))}
        if fold_dirs:
            paths, names, folds = _discover_folds(root, fold_dirs)
        else:
            refuse_split_folders(root)
            paths, names = _from_class_folders(root, root)
    if not paths:
        raise DataError(
            f"{root}: no images found; expected <Class>/ folders of {', '.join(sorted(IMAGE_EXTENSIONS))} files"
        )
    if group_pattern is not None:
        groups = groups_from_pattern(paths, group_pattern)

    skipped = []
    copies: dict[int, int] = {}
    if check_images:
        reasons, fingerprints = read_every_image([root / rel for rel in paths], processes)
        keep = []
        for i, (rel, reason) in enumerate(zip(paths, reasons)):
            if reason is None:
                keep.append(i)
            elif on_error == "skip":
                skipped.append((rel, reason))
            else:
                raise DataError(f"{root / rel}: {reason}; remove or replace it, or skip bad files (--skip-bad)")
        for rel, reason in skipped:
            log.warning("skipped %s: %s", root / rel, reason)
        paths = [paths[i] for i in keep]
        names = [names[i] for i in keep]
        folds = [folds[i] for i in keep] if folds is not None else None
        groups = [groups[i] for i in keep] if groups is not None else None
        keep, copies = settle_duplicates(root, paths, names, fingerprints, duplicates)
        paths, names = [paths[i] for i in keep], [names[i] for i in keep]
        folds = [folds[i] for i in keep] if folds is not None else None
        groups = [groups[i] for i in keep] if groups is not None else None
        if folds is not None:
            warn_straddling_copies(folds, paths, copies)

    classes = sorted(set(names))
    if len(classes) < 2:
        raise DataError(
            f"{root}: one class ({classes[0]}); a classifier needs two or more class folders (or labels in the manifest)"
        )
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    fold_array = np.array(folds, dtype=np.int64) if folds is not None else None
    group_array = np.array(groups, dtype=str) if groups is not None else None
    return Samples(root, paths, labels, classes, fold_array, group_array, skipped, copies)
