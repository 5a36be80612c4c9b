"""Writing a data set: class counts, patients, the files, the cache, the preview."""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.errors import ConfigError
from ..core.files import atomic_write_bytes
from ..data.taxonomy import MASK_FOLDER, SPERM18_CLASSES
from .blood4 import BLOOD4_CLASSES, render_blood
from .hushem4 import HUSHEM4_CLASSES, render_head
from .sperm18 import SPERM18_FREQUENCY, render_sperm

log = logging.getLogger(__name__)

DEFAULT_SCALE = {"sperm18": 0.08, "hushem4": None, "blood4": None}
MIN_PER_CLASS = 12
PATIENT_STREAM = 7919  # seeds the patients' draws apart from every image's own
# Bumped whenever rendering changes, so cached default data sets are regenerated.
GENERATOR_VERSION = 3


KINDS: dict[str, tuple[list[str], Callable]] = {
    "sperm18": (SPERM18_CLASSES, render_sperm),
    "hushem4": (HUSHEM4_CLASSES, render_head),
    "blood4": (BLOOD4_CLASSES, render_blood),
}


def class_counts(kind: str, per_class: int | None = None, scale: float | None = None) -> dict[str, int]:
    """Images per class: ``per_class`` each, or the paper-shaped imbalance times ``scale``."""
    classes = KINDS[kind][0]
    if per_class is not None:
        return {name: per_class for name in classes}
    if kind == "sperm18":
        scale = DEFAULT_SCALE["sperm18"] if scale is None else scale
        return {name: max(MIN_PER_CLASS, int(round(SPERM18_FREQUENCY[name] * scale))) for name in classes}
    # HuSHeM has 216 heads (42-76 per class); the ALL set 3,242 images (512 benign).
    defaults = {"hushem4": [76, 54, 43, 43], "blood4": [128, 244, 240, 200]}[kind]
    factor = 1.0 if scale is None else scale
    return {name: max(MIN_PER_CLASS, int(round(n * factor))) for name, n in zip(classes, defaults)}


@dataclass(frozen=True)
class PatientLook:
    """What one patient's (slide's) images share: a stain cast, a brightness shift, extra blur."""

    stain: tuple[float, float, float]  # per-channel gain
    brightness: float  # added to every channel, in grey levels
    blur: float  # extra Gaussian blur (pixels)

    def apply(self, image: Image.Image) -> Image.Image:
        """``image`` with this patient's stain, brightness and blur."""
        pixels = np.asarray(image, dtype=np.float32) * np.array(self.stain, dtype=np.float32) + self.brightness
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
        return image.filter(ImageFilter.GaussianBlur(self.blur)) if self.blur > 0 else image


def patient_looks(seed: int, patients: int) -> list[PatientLook]:
    """The look of every patient, from its own generator (independent of the images' draws)."""
    looks = []
    for p in range(patients):
        rng = np.random.default_rng(np.random.SeedSequence([seed, PATIENT_STREAM, p]))
        stain = tuple(float(g) for g in 1.0 + rng.normal(0, 0.07, 3))
        looks.append(PatientLook(stain, float(rng.normal(0, 10)), float(rng.uniform(0, 0.8))))
    return looks


def assign_patients(counts: dict[str, int], seed: int, patients: int) -> dict[str, list[int]]:
    """The patient of every image: each class draws from its own skewed mix of patients
    (Dirichlet 0.5), and a class of two or more images always spans at least two patients."""
    assigned = {}
    for c, (label, count) in enumerate(counts.items()):
        rng = np.random.default_rng(np.random.SeedSequence([seed, PATIENT_STREAM, patients, c]))
        chosen = rng.choice(patients, size=count, p=rng.dirichlet(np.full(patients, 0.5))).tolist()
        if count >= 2 and len(set(chosen)) == 1:
            chosen[-1] = (chosen[0] + 1) % patients
        assigned[label] = chosen
    return assigned


def render(kind: str, label: str, seed: int, index: int) -> tuple[Image.Image, dict]:
    """Image ``index`` of class ``label``, from its own seeded generator."""
    classes, renderer = KINDS[kind]
    return renderer(label, _image_rng(classes, label, seed, index))


def render_with_mask(label: str, seed: int, index: int) -> tuple[Image.Image, dict, Image.Image]:
    """sperm18 image ``index`` of ``label`` (the same as :func:`render`'s) and its part mask."""
    return render_sperm(label, _image_rng(SPERM18_CLASSES, label, seed, index), mask=True)


def _image_rng(classes: list[str], label: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, classes.index(label), index]))


def generate(
    out_dir: str | Path,
    kind: str = "sperm18",
    seed: int = 42,
    per_class: int | None = None,
    scale: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    patients: int | None = None,
    masks: bool = False,
    replace_incomplete: bool = False,
) -> Path:
    """Write a synthetic data set as ImageFolder PNGs plus ``metadata.csv``; returns ``out_dir``.

    The folder is built under a private temporary name and renamed when complete, so an
    interrupted run never leaves a half-written data set behind, and two processes never
    meet. ``replace_incomplete`` (the cache, :func:`generate_once`): an existing folder
    without ``metadata.csv`` is replaced, and a complete one another process published
    meanwhile is used. ``patients``: see the
    module docstring. ``masks`` (sperm18): also each image's part mask (``PART_VALUES``) as
    ``.masks/<class>/<name>.png``, its path in the ``mask`` column; the folder is hidden so
    that ImageFolder discovery does not take it for a class. The images do not change.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if masks and kind != "sperm18":
        raise ConfigError(f"--masks: part masks exist for sperm18 only, not {kind}")
    if patients is not None and patients < 2:
        raise ConfigError(f"--patients {patients}: give at least 2 patients")
    out_dir = Path(out_dir)
    if not replace_incomplete and out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: folder exists and is not empty; choose another --out or delete it")
    try:  # a private temporary name: two processes generating the same set never meet
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(
            tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial", dir=out_dir.parent)
        )
    except OSError as error:
        raise ConfigError(
            f"{out_dir.parent}: not writable ({error.strerror}); choose another --out, or set $SPERMFUSE_CACHE to a writable folder"
        ) from None
    try:
        _write_set(tmp_dir, kind, seed, per_class, scale, masks, patients, progress)
        try:
            tmp_dir.rename(out_dir)  # replaces an absent or empty folder
        except OSError:
            if (out_dir / "metadata.csv").is_file():
                log.info("%s: another process generated the same set first; using it", out_dir)
            else:  # no metadata.csv (written last): an interrupted older version's leftover
                leftover = Path(
                    tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".old", dir=out_dir.parent)
                )
                os.rename(out_dir, leftover / out_dir.name)
                shutil.rmtree(leftover, ignore_errors=True)
                tmp_dir.rename(out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _write_set(
    tmp_dir: Path,
    kind: str,
    seed: int,
    per_class: int | None,
    scale: float | None,
    masks: bool,
    patients: int | None,
    progress,
) -> None:
    counts = class_counts(kind, per_class, scale)
    total, done = sum(counts.values()), 0
    looks = patient_looks(seed, patients) if patients else []
    assigned = assign_patients(counts, seed, patients) if patients else {}
    rows = []
    for label, count in counts.items():
        (tmp_dir / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            if masks:
                image, meta, mask = render_with_mask(label, seed, i)
            else:
                image, meta = render(kind, label, seed, i)
            stem = f"{label.replace(' ', '_')}_{i:05d}"
            if patients:
                patient = assigned[label][i]
                image, stem = looks[patient].apply(image), f"{stem}_patient{patient:03d}"
                meta = {**meta, "patient": f"{patient:03d}"}
            rel = f"{label}/{stem}.png"
            image.save(tmp_dir / rel, optimize=False)
            if masks:
                mask_rel = f"{MASK_FOLDER}/{label}/{stem}.png"
                (tmp_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                mask.save(tmp_dir / mask_rel, optimize=False)
                meta = {**meta, "mask": mask_rel}
            rows.append({"path": rel, "label": label, **meta})
            done += 1
            if progress:
                progress(done, total)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(tmp_dir / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def generate_once(out_dir: str | Path, kind: str = "sperm18", **options) -> Path:
    """:func:`generate` into a cache folder unless it already holds a complete set (``metadata.csv``
    is written last); a folder without one is an interrupted or foreign leftover and is replaced."""
    out_dir = Path(out_dir)
    if not (out_dir / "metadata.csv").exists():
        log.info(
            "generating the synthetic %s set (%s) in %s (once)",
            kind,
            ", ".join(f"{k} {v}" for k, v in options.items()),
            out_dir,
        )
        generate(out_dir, kind, replace_incomplete=True, **options)
    return out_dir


def preview(kind: str, path: str | Path, per_class: int = 4, seed: int = 42, tile: int = 96) -> Path:
    """A labelled grid with ``per_class`` samples of every class, for a look at a glance."""
    classes = KINDS[kind][0]
    label_width = 120
    sheet = Image.new("RGB", (label_width + per_class * tile, len(classes) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for row, label in enumerate(classes):
        draw.text((6, row * tile + tile // 2 - 6), label, fill="black")
        for col in range(per_class):
            image, _ = render(kind, label, seed, col)
            image.thumbnail((tile - 4, tile - 4))
            sheet.paste(
                image, (label_width + col * tile + (tile - image.width) // 2, row * tile + (tile - image.height) // 2)
            )
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
