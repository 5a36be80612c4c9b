"""Prediction on new image files with the fused model (``fused_model.py``).

Each member's ``best.pt`` carries its preprocessing (``transforms.PipelineSpec``), so the
test-time pipeline is rebuilt exactly.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.conformal import SetCalibrator, predict_sets
from ..core.errors import DataError
from ..core.files import atomic_write_csv, read_csv
from ..core.fused_model import Classifier, FusedModel
from ..core.transforms import from_spec
from ..data.images import IMAGE_EXTENSIONS, check_image, load_rgb
from ..explain.gradcam import explain_files, peak
from ..reporting.figures import explanation_figure

log = logging.getLogger(__name__)

EXPLANATIONS_CSV = "explanations.csv"


def list_images(folder: str | Path) -> list[Path]:
    """Every image file below ``folder``, sorted; an empty or missing folder is a DataError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder of images not found")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def is_pattern(spec: str | Path) -> bool:
    """Whether ``--predict`` is a glob pattern rather than a path that exists."""
    return not Path(spec).exists() and glob.has_magic(str(spec))


def prediction_inputs(spec: str | Path) -> tuple[Path, list[Path]]:
    """``--predict``'s images and the folder their names are relative to: a folder (every image
    below it), one image file, or a glob pattern (quoted, e.g. ``'cells/*.png'``)."""
    spec = Path(spec)
    if spec.is_dir():
        return spec, list_images(spec)
    if spec.is_file():
        if spec.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"--predict {spec}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return spec.parent, [spec]
    if is_pattern(spec):
        matches = sorted(
            Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS
        )
        if not matches:
            raise DataError(f"--predict {spec}: the pattern matches no image")
        return Path(os.path.commonpath([str(p.parent) for p in matches])), matches
    raise DataError(f"--predict {spec}: no such folder, image or pattern")


@torch.no_grad()
def fused_probabilities(
    images: Sequence[Path],
    members: Sequence[Sequence[Classifier]],
    weights: Sequence[Sequence[float]],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """The :class:`~spermfuse.core.fused_model.FusedModel` probabilities of image files: each file is
    read once and brought into each distinct member geometry once per batch (the folds of one
    model share theirs), then fused as ``fuse.py --predict`` defines it."""
    fused = FusedModel(members, weights).to(device)
    pipelines = {spec: from_spec(spec) for spec in fused.distinct_specs}
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = [load_rgb(p) for p in images[start : start + batch_size]]
        prepared = {
            spec: torch.stack([pipeline.scaled(image) for image in batch]).to(device)
            for spec, pipeline in pipelines.items()
        }
        probabilities.append(torch.softmax(fused.fused_logits(prepared).double(), dim=1).cpu().numpy())
    return np.concatenate(probabilities)


def usable_images(
    folder: Path, skip_bad: bool = False, images: Sequence[Path] | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every image below ``folder`` (or ``images``, named relative to it) checked before any model
    loads: (the good ones, (path, why) of the bad ones). Bad images are one error listing them,
    unless ``skip_bad``."""
    images = list(images) if images is not None else list_images(folder)
    bad = [(path, why) for path in images if (why := check_image(path)) is not None]
    if bad and not skip_bad:
        shown = "; ".join(f"{path.relative_to(folder).as_posix()}: {why}" for path, why in bad[:5])
        raise DataError(
            f"--predict {folder}: {len(bad)} of {len(images)} images unusable ({shown}{' ...' if len(bad) > 5 else ''}); "
            "remove them, or add --skip-bad to list them in the CSV and go on"
        )
    skipped = {path for path, _ in bad}
    good = [path for path in images if path not in skipped]
    if not good:
        raise DataError(f"--predict {folder}: none of the {len(images)} images is usable")
    return good, bad


def prediction_table(
    root: Path,
    images: Sequence[Path],
    bad: Sequence[tuple[Path, str]],
    probabilities: np.ndarray,
    classes: Sequence[str],
    threshold: float | None = None,
    set_calibrator: SetCalibrator | None = None,
) -> tuple[list[str], list[list]]:
    """predictions.csv: path, predicted, confidence[, refer][, set, set_size], p_<class>...[, skipped]."""
    header = ["path", "predicted", "confidence"]
    rows = [
        [path.relative_to(root).as_posix(), classes[int(p.argmax())], f"{p.max():.6f}"]
        for path, p in zip(images, probabilities)
    ]
    if threshold is not None:  # 1: below the certified threshold, a person looks at it
        header.append("refer")
        rows = [row + [int(p.max() < threshold)] for row, p in zip(rows, probabilities)]
    if set_calibrator is not None:
        sets = predict_sets(probabilities, set_calibrator)
        header += ["set", "set_size"]
        rows = [
            row + ["|".join(c for c, inside in zip(classes, members) if inside), int(members.sum())]
            for row, members in zip(rows, sets)
        ]
    header += [f"p_{c}" for c in classes]
    rows = [row + [f"{v:.6f}" for v in p] for row, p in zip(rows, probabilities)]
    if bad:  # skipped images: a row each, the reason in the last column
        header.append("skipped")
        rows = [row + [""] for row in rows] + [
            [path.relative_to(root).as_posix()] + [""] * (len(header) - 2) + [why] for path, why in bad
        ]
    return header, rows


def explanation_files(folder: Path) -> set[str]:
    """The files of an explanation folder written before manifests: its index and the figures it lists."""
    index = folder / EXPLANATIONS_CSV
    if not index.is_file():
        return set()
    return {EXPLANATIONS_CSV} | {row["figure"] for row in read_csv(index)}


def write_explanations(
    root: Path,
    folder: Path,
    images: Sequence[Path],
    members: Sequence[Sequence[Classifier]],
    names: Sequence[str],
    weights: Sequence[Sequence[float]],
    device: torch.device | str = "cpu",
) -> None:
    """One figure per image (the image, each member's Grad-CAM, the fused one) and an index.

    A figure is named after its image with the extension kept (``cell.jpg.png``), so
    ``cell.jpg`` and ``cell.png`` get a figure each."""
    classes = members[0][0].classes
    rows = []
    for number, explained in enumerate(explain_files(images, members, weights, names, device), 1):
        relative = explained.path.relative_to(root)
        figure = folder / relative.with_name(relative.name + ".png")
        label = f"{classes[explained.predicted]} {explained.probability:.2f}"
        explanation_figure(load_rgb(explained.path), explained.figure_maps(), f"{relative.as_posix()}: {label}", figure)
        row, column = peak(explained.fused[None])[0].tolist()
        rows.append(
            [
                relative.as_posix(),
                classes[explained.predicted],
                f"{explained.probability:.6f}",
                figure.relative_to(folder).as_posix(),
                row,
                column,
            ]
        )
        if number % 50 == 0 or number == len(images):
            log.info("explained %d/%d images", number, len(images))
    atomic_write_csv(
        folder / EXPLANATIONS_CSV, ["path", "predicted", "probability", "figure", "peak_row", "peak_column"], rows
    )
