"""Prediction on new images with trained models and their fusion weights.

Each model's ``best.pt`` carries its architecture, classes, image size, normalisation,
pad colour and preprocessing, so the test-time pipeline is rebuilt exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import safe_torch_load
from .data import IMAGE_EXTENSIONS, DataError, load_rgb
from .engine import tta_logits
from .metrics import softmax
from .models import create_model
from .transforms import Pipeline, PipelineSpec, from_spec

log = logging.getLogger(__name__)

@dataclass
class Classifier:
    """A trained member: its network, the preprocessing it was tested with, and its record."""

    model: nn.Module
    spec: PipelineSpec
    classes: list[str]
    source: Path
    tta: str = "none"  # the test-time augmentation its logits files were written with
    split: str = ""  # run_folder.split_digest of what it learned from and was tested on ("" before v0.3)

    @cached_property
    def pipeline(self) -> Pipeline:
        """The eval pipeline of :attr:`spec`."""
        return from_spec(self.spec)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """A trained model from its ``best.pt`` and the eval pipeline it was tested with."""
    path = Path(path)
    checkpoint = safe_torch_load(path)
    classes = list(checkpoint["classes"])
    model = create_model(checkpoint["arch"], len(classes), dropout=checkpoint.get("dropout"), padding=checkpoint.get("padding", "symmetric"))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    spec = PipelineSpec.from_dict(checkpoint.get("pipeline"), str(path))
    return Classifier(model, spec, classes, path, checkpoint["tta"], checkpoint["split"])


def load_fold_members(runs: str | Path, models: Sequence[str], folds: Sequence[int], device: torch.device | str = "cpu") -> list[list[Classifier]]:
    """The trained members of each fold, ``runs/<model>/fold<k>/best.pt``: ``[fold][model]``."""
    return [[load_classifier(Path(runs) / name / f"fold{k}" / "best.pt", device) for name in models] for k in folds]


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder of images not found")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def check_same_classes(members: Sequence[Sequence[Classifier]]) -> list[str]:
    """The classes every member shares; a member trained on other classes, or on other images
    than the other members of its fold, is an error naming it."""
    classes = members[0][0].classes
    for fold in members:
        for classifier in fold:
            if classifier.classes != classes:
                raise DataError(f"{classifier.source}: classes differ from {members[0][0].source}; fuse only models of one data set")
            if classifier.split and fold[0].split and classifier.split != fold[0].split:
                raise DataError(f"{classifier.source}: learned from other images than {fold[0].source} (another folds.csv or data); retrain it on the same split")
    return classes


@torch.no_grad()
def fused_probabilities(
    images: Sequence[Path],
    members: Sequence[Sequence[Classifier]],
    weights: Sequence[Sequence[float]],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """softmax of the fused logits, averaged over ``members`` (one list of models per fold).

    Within fold k the logits are fused with ``weights[k]`` (the paper's rule, with that
    fold's own weights); the folds' fused logits are averaged, a plain ensemble of the
    cross-validation models.
    """
    classes = check_same_classes(members)
    total = np.zeros((len(images), len(classes)), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = [load_rgb(p) for p in images[start : start + batch_size]]
        # The eval pipelines are deterministic and the folds of one model share theirs:
        # preprocess each image once per distinct pipeline, not once per fold.
        prepared: dict[PipelineSpec, torch.Tensor] = {}
        for fold, fold_weights in zip(members, weights):
            fused = 0.0
            for classifier, weight in zip(fold, fold_weights):
                if classifier.spec not in prepared:
                    prepared[classifier.spec] = torch.stack([classifier.pipeline(image) for image in batch]).to(device)
                fused = fused + weight * tta_logits(classifier.model, prepared[classifier.spec], classifier.tta).float().cpu().numpy()
            total[start : start + len(batch)] += fused
    return softmax(total / len(members))
