"""Prediction on new image files with the fused model (``fused_model.py``).

Each member's ``best.pt`` carries its preprocessing (``transforms.PipelineSpec``), so the
test-time pipeline is rebuilt exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import IMAGE_EXTENSIONS, DataError, load_rgb
from .fused_model import Classifier, FusedModel
from .transforms import from_spec


def list_images(folder: str | Path) -> list[Path]:
    """Every image file below ``folder``, sorted; an empty or missing folder is a DataError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder of images not found")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


@torch.no_grad()
def fused_probabilities(
    images: Sequence[Path],
    members: Sequence[Sequence[Classifier]],
    weights: Sequence[Sequence[float]],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """The :class:`~spermfuse.fused_model.FusedModel` probabilities of image files: each file is
    read once and brought into each distinct member geometry once per batch (the folds of one
    model share theirs), then fused as ``fuse.py --predict`` defines it."""
    fused = FusedModel(members, weights).to(device)
    pipelines = {spec: from_spec(spec) for spec in fused.distinct_specs}
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = [load_rgb(p) for p in images[start : start + batch_size]]
        prepared = {spec: torch.stack([pipeline.scaled(image) for image in batch]).to(device) for spec, pipeline in pipelines.items()}
        probabilities.append(torch.softmax(fused.fused_logits(prepared).double(), dim=1).cpu().numpy())
    return np.concatenate(probabilities)
