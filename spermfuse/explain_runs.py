"""Explanations of a cross-validated fusion's own test images: the gallery and the pointing game.

Every test image is explained by the members of the fold that tested it, fused with that
fold's weights (``fusion.json``), as ``fuse.py --predict --fold k`` would predict it. Needs
the runs' checkpoints (``best.pt``), not only their logits.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .calibration import probabilities_of
from .errors import ConfigError
from .explain import ImageExplanation, default_layer, explain_files, pointing_game, spearman
from .fused_model import load_fold_members
from .models.resnetv2 import ResNetV2
from .run_folder import FUSION_FOLDER, data_root_of_run, load_fold_sets, read_fusion_settings
from .synthetic import DEFECT_PART


@dataclass
class TestImage:
    path: str  # relative to the data root
    label: int
    fold: int
    predicted: int
    probability: float


def fused_test_images(runs: Path) -> tuple[list[TestImage], list[str]]:
    """Each test image of ``runs/fusion`` with its fold, label, fused prediction and its probability."""
    images = []
    sets = load_fold_sets(runs / FUSION_FOLDER)
    for fold_set in sets:
        probabilities = probabilities_of(fold_set.logits)
        for path, label, p in zip(fold_set.paths, fold_set.labels, probabilities):
            images.append(TestImage(str(path), int(label), fold_set.fold, int(p.argmax()), float(p.max())))
    return images, sets[0].classes


def explain_test_images(
    runs: Path, images: Sequence[TestImage], device: torch.device | str = "cpu"
) -> Iterator[tuple[TestImage, ImageExplanation]]:
    """Grad-CAM of each test image under its own fold's fused members, fold by fold."""
    settings = read_fusion_settings(runs / FUSION_FOLDER)
    names = settings.models
    root = data_root_of_run(runs / names[0] / f"fold{images[0].fold}") if images else Path()
    for fold in sorted({image.fold for image in images}):
        members = load_fold_members(runs, names, [fold], device)
        weights = settings.prediction_weights([fold])
        chosen = [image for image in images if image.fold == fold]
        for image, explained in zip(
            chosen, explain_files([root / i.path for i in chosen], members, weights, names, device)
        ):
            yield image, explained


def gallery_images(images: Sequence[TestImage], classes: Sequence[str]) -> list[tuple[str, str, TestImage]]:
    """Per class, the most confident correct and the most confident wrong test image: (class, kind, image)."""
    chosen = []
    for index, name in enumerate(classes):
        of_class = [i for i in images if i.label == index]
        for kind, keep in (("correct", lambda i: i.predicted == i.label), ("wrong", lambda i: i.predicted != i.label)):
            candidates = [i for i in of_class if keep(i)]
            if candidates:
                chosen.append((name, kind, max(candidates, key=lambda i: i.probability)))
    return chosen


def read_masks(masks_root: Path) -> dict[str, Path]:
    """``path -> mask file`` from a ``--masks`` data set's metadata.csv (``python -m spermfuse.synthetic --masks``)."""
    manifest = masks_root / "metadata.csv"
    try:
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ConfigError(
            f"--masks {masks_root}: no readable metadata.csv ({error.strerror}); generate it with python -m spermfuse.synthetic --out DIR --masks"
        ) from None
    if not rows or "mask" not in rows[0]:
        raise ConfigError(
            f"--masks {manifest}: has no 'mask' column; generate the set with python -m spermfuse.synthetic --masks"
        )
    return {row["path"]: masks_root / row["mask"] for row in rows}


def check_masks(runs: Path, masks_root: Path) -> dict[str, Path]:
    """The masks of every test image of ``runs/fusion``, after checking that the mask set holds
    the very images that were tested (same generator, seed and scale), byte for byte."""
    images, classes = fused_test_images(runs)
    unknown = sorted({classes[i.label] for i in images} - set(DEFECT_PART))
    if unknown:
        raise ConfigError(f"--masks: the pointing game knows the sperm18 classes; not {', '.join(unknown)}")
    masks = read_masks(masks_root)
    data_root = data_root_of_run(runs / read_fusion_settings(runs / FUSION_FOLDER).models[0] / f"fold{images[0].fold}")
    for image in images:
        twin = masks_root / image.path
        if image.path not in masks or not twin.is_file() or twin.read_bytes() != (data_root / image.path).read_bytes():
            raise ConfigError(
                f"--masks {masks_root}: {image.path} is missing or differs from the tested {data_root / image.path}; "
                "generate the masks with the data set's kind, seed and scale"
            )
    return masks


def pointing_game_of_runs(
    runs: Path, masks: dict[str, Path], device: torch.device | str = "cpu", limit: int | None = None
) -> dict:
    """The pointing game (``explain.pointing_game``) of the fused model on every test image
    (``limit``: the first N per fold), grouped by the part that carries each class's defect;
    ``masks``: what :func:`check_masks` returned."""
    images, classes = fused_test_images(runs)
    if limit is not None:
        images = [i for fold in sorted({i.fold for i in images}) for i in [j for j in images if j.fold == fold][:limit]]
    heat, truth, parts = [], [], []
    for image, explained in explain_test_images(runs, images, device):
        heat.append(explained.fused)
        truth.append(np.asarray(Image.open(masks[image.path])))
        parts.append(DEFECT_PART[classes[image.label]])
    return pointing_game(heat, truth, parts)


def last_stage(model: nn.Module) -> list[nn.Module]:
    """The modules whose weights make the default Grad-CAM layer's features: the EfficientNet's
    last feature block; the ResNetV2's last stage and final GroupNorm (its Grad-CAM layer, the
    ReLU after that norm, has no weights)."""
    if isinstance(model, ResNetV2):
        return [model.stages[-1], model.norm]
    return [default_layer(model)]


def reinitialise_last_stage(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose last stage (:func:`last_stage`) is freshly initialised."""
    model = copy.deepcopy(model)
    with torch.random.fork_rng():  # seeded for repeatable figures, the caller's generator untouched
        torch.manual_seed(0)
        for module in (m for stage in last_stage(model) for m in stage.modules()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def model_dependence(runs: Path, device: torch.device | str = "cpu", count: int = 16) -> float:
    """Mean Spearman rank correlation between the fused maps of the first ``count`` test images of
    fold 1 and those after re-initialising every member's last stage (near 1 would mean the maps
    show the image, not what the model learned)."""
    images, _ = fused_test_images(runs)
    images = [i for i in images if i.fold == images[0].fold][:count]
    settings = read_fusion_settings(runs / FUSION_FOLDER)
    names, fold = settings.models, images[0].fold
    members = load_fold_members(runs, names, [fold], device)
    weights = settings.prediction_weights([fold])
    root = data_root_of_run(runs / names[0] / f"fold{fold}")
    paths = [root / i.path for i in images]
    before = [e.fused for e in explain_files(paths, members, weights, names, device)]
    for classifier in members[0]:
        classifier.model = reinitialise_last_stage(classifier.model).eval()
    after = [e.fused for e in explain_files(paths, members, weights, names, device)]
    return float(np.mean([spearman(a, b) for a, b in zip(before, after)]))
