"""The fused model, once: trained members of every fold, their preprocessing, test-time
augmentation and fusion weights in one ``nn.Module``.

``fuse.py --predict`` (through :func:`inference.fused_probabilities`), ``fuse.py --export`` (the
traced program) and the Grad-CAM of a prediction (``explain.explain_files``) all compute with it,
so they cannot drift apart. The fused probability of an image is

    p = softmax( (1/K) * sum_k sum_i w[k][i] * z_ki ),   z_ki = member i of fold k on its input,

where w[k] is fold k's mix from ``fusion.json`` (already divided by each member's temperature
when fusion was calibrated; ``FusionSettings.prediction_weights``). ``fusion.fuse`` is the same
rule on logits files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .checkpoints import safe_torch_load
from .engine import tta_logits
from .errors import DataError
from .models import create_model
from .transforms import Pipeline, PipelineSpec, from_spec


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
    """A trained model from its ``best.pt`` and the preprocessing it was tested with."""
    path = Path(path)
    checkpoint = safe_torch_load(path)
    classes = list(checkpoint["classes"])
    model = create_model(
        checkpoint["arch"],
        len(classes),
        dropout=checkpoint.get("dropout"),
        padding=checkpoint.get("padding", "symmetric"),
    )
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    spec = PipelineSpec.from_dict(checkpoint.get("pipeline"), str(path))
    return Classifier(model, spec, classes, path, checkpoint["tta"], checkpoint["split"])


def check_same_classes(members: Sequence[Sequence[Classifier]]) -> list[str]:
    """The classes every member shares; a member trained on other classes, or on other images
    than the other members of its fold, is an error naming it."""
    classes = members[0][0].classes
    for fold in members:
        for classifier in fold:
            if classifier.classes != classes:
                raise DataError(
                    f"{classifier.source}: classes differ from {members[0][0].source}; fuse only models of one data set"
                )
            if classifier.split and fold[0].split and classifier.split != fold[0].split:
                raise DataError(
                    f"{classifier.source}: learned from other images than {fold[0].source} (another folds.csv or data); retrain it on the same split"
                )
    return classes


class FusedModel(nn.Module):
    """Members ``[fold][i]`` fused with ``weights[fold][i]`` and averaged over folds.

    Inputs are images after each member's geometry (letterbox, and Otsu for method B) as
    [0, 1] tensors, one batch per distinct :class:`PipelineSpec`; each member's normalisation
    and test-time augmentation happen inside. ``forward`` takes one uint8 batch for all
    members (one geometry: what the exported program takes) and returns probabilities.
    """

    def __init__(self, folds: Sequence[Sequence[Classifier]], weights: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.classes = check_same_classes(folds)
        if len(weights) != len(folds) or any(len(w) != len(fold) for w, fold in zip(weights, folds)):
            raise DataError(
                f"{len(folds)} folds of {len(folds[0])} members need as many weights, got {[len(w) for w in weights]}"
            )
        self.members = nn.ModuleList(nn.ModuleList(c.model for c in fold) for fold in folds)
        self.specs = [[c.spec for c in fold] for fold in folds]
        self.tta = [[c.tta for c in fold] for fold in folds]
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer(
            "mean", torch.tensor([[c.spec.mean for c in fold] for fold in folds], dtype=torch.float32)[..., None, None]
        )
        self.register_buffer(
            "std", torch.tensor([[c.spec.std for c in fold] for fold in folds], dtype=torch.float32)[..., None, None]
        )

    @property
    def distinct_specs(self) -> list[PipelineSpec]:
        """The preprocessings the members need, each once, in member order."""
        return list(dict.fromkeys(spec for fold in self.specs for spec in fold))

    def member_inputs(self, images: Mapping[PipelineSpec, torch.Tensor]) -> list[list[torch.Tensor]]:
        """Each member's normalised input ``[fold][i]`` from the [0, 1] batches by spec."""
        return [
            [(images[spec] - self.mean[f, i]) / self.std[f, i] for i, spec in enumerate(fold)]
            for f, fold in enumerate(self.specs)
        ]

    def member_weights(self) -> list[list[float]]:
        """Each member's share of the fused logit: its fold's weight over the number of folds."""
        return (self.weights / len(self.members)).tolist()

    def fused_logits(self, images: Mapping[PipelineSpec, torch.Tensor], tta: bool = True) -> torch.Tensor:
        """(1/K) sum_k sum_i w[k][i] z_ki (module docstring); ``tta=False``: the plain forward."""
        total = torch.zeros((), dtype=torch.float32, device=self.weights.device)
        for f, (fold, inputs) in enumerate(zip(self.members, self.member_inputs(images))):
            for i, (model, x) in enumerate(zip(fold, inputs)):
                total = total + self.weights[f, i] * tta_logits(model, x, self.tta[f][i] if tta else "none").float()
        return total / len(self.members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 letterboxed RGB (N, 3, S, S) of every member's one geometry -> class probabilities."""
        scaled = images.float() / 255.0
        return torch.softmax(self.fused_logits({spec: scaled for spec in self.distinct_specs}), dim=1)
