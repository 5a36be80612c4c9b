"""Model registry: ``create_model(name, num_classes)`` and ``list_models()``.

| name               | what                                              | default dropout |
|--------------------|---------------------------------------------------|-----------------|
| efficientnetv2_s   | torchvision EfficientNetV2-S (method A)           | 0.7             |
| resnet50v2         | BiT ResNetV2-50x1, own implementation (method A)  | 0.5             |
| efficientnet_b4    | torchvision EfficientNet-B4 (method B)            | 0.4             |
| resnet26v2         | BiT ResNetV2-26x1 (blocks 2,2,2,2)                | 0.5             |
| resnetv2_tiny      | ResNetV2 blocks 1,1,1,1 at width x0.25, 0.51 M (tests, CPU demo) | 0.5 |
| efficientnet_b0    | torchvision EfficientNet-B0                       | 0.2             |
| efficientnet_tiny  | narrow four-stage EfficientNetV2-style net, 0.43 M (tests, CPU demo) | 0.2 |
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from ..errors import ConfigError
from . import efficientnet
from .resnetv2 import ResNetV2, StdConv2d
from .catalogue import find_entry
from .weights import LoadReport, WeightsError, load_pretrained, load_weights


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
            raise ConfigError("--padding same: applies to the EfficientNets; the ResNetV2 models pad as BiT's reference does")
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


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve_padding(name: str, pretrained: str | bool | None = None, padding: str | None = None) -> str:
    """The padding to build ``name`` with: ``padding`` when given, else what the catalogued
    checkpoint ``pretrained`` was trained with ("same" for TensorFlow's), else symmetric."""
    if padding is not None:
        if padding not in efficientnet.PADDINGS:
            raise ConfigError(f"--padding {padding}: choose one of {', '.join(efficientnet.PADDINGS)}")
        return padding
    if pretrained:
        return find_entry(name, pretrained).padding
    return "symmetric"


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: str | bool | None = None,
    weights: str | Path | None = None,
    dropout: float | None = None,
    drop_path: float = 0.0,
    padding: str | None = None,
) -> nn.Module:
    """Build a registered model; optionally load a catalogued checkpoint or a local file.

    ``pretrained``: a tag of ``catalogue.py`` (True or "default": the paper's checkpoint;
    downloads on first use, so only when asked). ``weights=PATH`` loads a local file (state
    dict, spermfuse checkpoint, BiT .npz, timm state dict, .safetensors), re-initialising the
    head when the class count differs. ``drop_path``: stochastic depth of the EfficientNets
    (none by default; the papers name none). ``padding``: "symmetric" (PyTorch's) or "same"
    (TensorFlow's, for TF-trained EfficientNet checkpoints); None: what the catalogued
    checkpoint needs, else symmetric.
    """
    spec = get_spec(name)
    padding = resolve_padding(name, pretrained, padding)
    model = spec.builder(num_classes, spec.dropout if dropout is None else dropout, drop_path, padding)
    load_initial_weights(model, name, pretrained=pretrained, weights=weights)
    return model


def load_initial_weights(
    model: nn.Module, name: str, *, pretrained: str | bool | None = None, weights: str | Path | None = None
) -> LoadReport | None:
    """Load the starting weights of a registered model; the report says what the weights expect
    (their mean/std); None when neither is asked (random initialisation)."""
    if pretrained and weights is not None:
        raise ConfigError("give either --pretrained or --weights PATH, not both")
    if pretrained:
        return load_pretrained(model, name, get_spec(name), pretrained)
    if weights is not None:
        return load_weights(model, weights, get_spec(name))
    return None


__all__ = ["LoadReport", "create_model", "resolve_padding", "load_initial_weights", "list_models", "get_spec", "REGISTRY", "ResNetV2", "StdConv2d", "WeightsError"]
