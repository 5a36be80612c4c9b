"""The architectures by name: how to build each, its default dropout, its family and its head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ConfigError
from . import efficientnet
from .resnetv2 import ResNetV2


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable[[int, float, float, str], nn.Module]  # (num_classes, dropout, drop_path, padding)
    dropout: float
    family: str  # "resnetv2" or "efficientnet": which checkpoint formats apply
    head: str  # name of the classifier module, re-initialised for a new class count


def _resnetv2(layers, width=1.0, stem=64, groups=32) -> Callable[[int, float, float, str], nn.Module]:
    def build(num_classes: int, dropout: float, drop_path: float, padding: str) -> nn.Module:
        if drop_path > 0:
            raise ConfigError("--drop-path: the ResNetV2 models have no stochastic depth; leave it at 0")
        if padding != "symmetric":
            # BiT's reference implementation pads explicitly, as this port does (checked against timm).
            raise ConfigError(
                "--padding same: applies to the EfficientNets; the ResNetV2 models pad as BiT's reference does"
            )
        return ResNetV2(layers, num_classes, width, stem, dropout, groups)

    return build


REGISTRY: dict[str, ModelSpec] = {
    "efficientnetv2_s": ModelSpec(efficientnet.efficientnet_v2_s, 0.7, "efficientnet", "classifier.1"),
    "resnet50v2": ModelSpec(_resnetv2((3, 4, 6, 3)), 0.5, "resnetv2", "fc"),
    "efficientnet_b4": ModelSpec(efficientnet.efficientnet_b4, 0.4, "efficientnet", "classifier.1"),
    "resnet26v2": ModelSpec(_resnetv2((2, 2, 2, 2)), 0.5, "resnetv2", "fc"),
    # At width x0.25 a stage has 16-128 channels: 8 groups keep GroupNorm from degenerating
    # into instance norm (one channel per group), which learns far more slowly from scratch.
    "resnetv2_tiny": ModelSpec(_resnetv2((1, 1, 1, 1), width=0.25, stem=64, groups=8), 0.5, "resnetv2", "fc"),
    "efficientnet_b0": ModelSpec(efficientnet.efficientnet_b0, 0.2, "efficientnet", "classifier.1"),
    "efficientnet_tiny": ModelSpec(efficientnet.efficientnet_tiny, 0.2, "efficientnet", "classifier.1"),
}
