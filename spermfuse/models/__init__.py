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

from pathlib import Path

from torch import nn

from ..errors import ConfigError
from . import efficientnet
from .catalogue import find_entry
from .registry import REGISTRY, ModelSpec
from .resnetv2 import ResNetV2, StdConv2d
from .weights import LoadReport, WeightsError, load_pretrained, load_weights


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
        return load_weights(model, weights, get_spec(name), name)
    return None


__all__ = [
    "LoadReport",
    "create_model",
    "resolve_padding",
    "load_initial_weights",
    "list_models",
    "get_spec",
    "REGISTRY",
    "ResNetV2",
    "StdConv2d",
    "WeightsError",
]
