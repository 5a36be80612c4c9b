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
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
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
    copies: dict[int, int] = field(
        default_factory=dict
    )  # index of a byte-identical copy -> index of its first occurrence

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def absolute_paths(self) -> list[Path]:
        """Each image's full path (``paths`` are relative to ``root``)."""
        return [self.root / p for p in self.paths]

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {name: int(n) for name, n in zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)))}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def check_image(path: Path) -> str | None:
    """Decode the whole file; return why it is unusable, or None when it is fine."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image (the extension says image, the content does not)"
    except Image.DecompressionBombError as error:
        return f"too large to decode safely ({error})"
    except (OSError, SyntaxError, ValueError) as error:
        return f"unreadable or truncated image ({error})"
    return None


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


def find_copies(root: Path, paths: Sequence[str], names: Sequence[str]) -> dict[int, int]:
    """Byte-identical images: ``{index of a copy: index of the first}``. A copy under another
    class is refused (one image cannot be two classes); copies within a class are logged, and
    the split keeps them in one fold (``splits.load_or_create_folds``)."""
    first: dict[bytes, int] = {}
    copies = {}
    for i, rel in enumerate(paths):
        digest = hashlib.sha256((root / rel).read_bytes()).digest()
        j = first.setdefault(digest, i)
        if j == i:
            continue
        if names[j] != names[i]:
            raise DataError(
                f"{root / rel}: the same file as {root / paths[j]}, but labelled {names[i]!r} and {names[j]!r}; remove the wrong copy"
            )
        copies[i] = j
    if copies:
        shown = ", ".join(f"{paths[i]} = {paths[j]}" for i, j in list(copies.items())[:3])
        log.warning(
            "%d images are byte-identical copies of others of their class (%s%s); each copy is kept in its original's fold",
            len(copies),
            shown,
            " ..." if len(copies) > 3 else "",
        )
    return copies


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
) -> Samples:
    """Find the samples of a data set in any of the three layouts (see module docstring).

    With ``check_images`` every image is decoded once so that a bad file fails here,
    naming the file, instead of in the middle of training. ``on_error="skip"`` drops
    unreadable files and lists them in ``Samples.skipped``. Groups: a manifest's
    ``group_column``, or ``group_pattern`` on the file names.
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
        keep = []
        for i, rel in enumerate(paths):
            reason = check_image(root / rel)
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
        copies = find_copies(root, paths, names)

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


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """w_c = N / (C * n_c) from the training labels; a class absent from training gets 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    if (counts == 0).any():
        log.warning("classes %s have no training images; their loss weight is 0", np.flatnonzero(counts == 0).tolist())
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------- dataset


# The value that is full white in each high-bit-depth mode: 16-bit integers, 32-bit
# integers (how Pillow opens most 16-bit PNGs and TIFFs: their range is still 16 bits), and
# floats, which microscopy software writes in [0, 1].
MODE_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}


def load_rgb(path: Path, background: tuple[int, int, int] = (204, 191, 183)) -> Image.Image:
    """Open an image as 8-bit RGB: EXIF orientation applied; grey, palette, 16-bit and alpha handled.

    Transparent pixels are composited onto ``background`` rather than turning black.
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read image ({error}); remove or replace it") from None
    if image.mode in MODE_FULL_SCALE:
        # Scaled by what the mode can hold, never by this image's own maximum: a dim frame
        # stays dim, and every image of a data set is scaled alike.
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(
            np.clip(array / MODE_FULL_SCALE[image.mode] * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L"
        )
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (*background, 255))
        image = Image.alpha_composite(canvas, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample in one epoch: augmentations independent of workers and resume point."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageDataset(torch.utils.data.Dataset):
    """Images of ``samples`` at ``indices``; items are (tensor, label, sample index).

    Keys may be plain indices or (index, epoch) pairs from :class:`EpochSampler`; the
    augmentation of a sample is seeded by (seed, epoch, index).
    """

    def __init__(self, samples: Samples, indices: Sequence[int], transform: Callable, seed: int = 42) -> None:
        self.samples = samples
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        position, epoch = key if isinstance(key, tuple) else (key, 0)
        index = int(self.indices[position])
        image = load_rgb(self.samples.root / self.samples.paths[index])
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        return self.transform(image, rng), int(self.samples.labels[index]), index


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler and tags each index with the epoch, for per-epoch augmentation seeds.

    The tag travels with the index, so it reaches persistent workers too.
    """

    def __init__(self, sampler: torch.utils.data.Sampler, seed: int = 42) -> None:
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        generator = getattr(self.sampler, "generator", None)
        if generator is not None:
            # Shuffle order a function of the epoch alone, so a resumed run draws the same order.
            generator.manual_seed(self.seed + epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield int(index), self.epoch

    def __len__(self) -> int:
        return len(self.sampler)


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker its own base seed (from the loader's generator); pass it on to
    # numpy and random so any library code using them differs between workers too.
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 42,
    num_workers: int = 2,
    device: torch.device | str = "cpu",
    sampler: torch.utils.data.Sampler | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader: seeded shuffling for training, seeded workers, pinned memory on CUDA.

    Call ``loader.sampler.set_epoch(epoch)`` each epoch (an :class:`EpochSampler`).
    """
    if sampler is None:
        if train:
            sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = torch.utils.data.SequentialSampler(dataset)
    epoch_sampler = EpochSampler(sampler, seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=epoch_sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )
