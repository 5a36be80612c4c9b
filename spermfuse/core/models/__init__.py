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
| tv:<name>          | any torchvision classifier (tv:mobilenet_v3_large, tv:resnet18, ...), its head replaced | torchvision's |
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from . import efficientnet
from .registry import REGISTRY, ModelSpec, head_name, is_torchvision_name, torchvision_builder, torchvision_names
from .resnetv2 import ResNetV2, StdConv2d
from .weights import LoadReport, WeightsError, load_weights


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: the registry's, then every torchvision classifier as ``tv:<name>``."""
    return [*REGISTRY, *torchvision_names()]


def get_spec(name: str) -> ModelSpec:
    """How to build ``name``: a registered architecture, or ``tv:<name>`` (registry.py)."""
    if is_torchvision_name(name):
        return ModelSpec(torchvision_builder(name), math.nan, "torchvision", head_name(name))
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of {', '.join(REGISTRY)} or tv:<a torchvision classifier> "
            "(train.py --list-models)"
        )
    return REGISTRY[name]


def create_model(
    name: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    dropout: float | None = None,
    drop_path: float = 0.0,
    padding: str = "symmetric",
) -> nn.Module:
    """Build a registered model, optionally from a local checkpoint.

    ``weights=PATH`` loads a local file (state dict, spermfuse checkpoint, BiT .npz, timm state
    dict, .safetensors), re-initialising the head when the class count differs. ``drop_path``:
    stochastic depth of the EfficientNets (none by default; the papers name none). ``padding``:
    "symmetric" (PyTorch's) or "same" (TensorFlow's, for TF-trained EfficientNet checkpoints).
    Catalogued checkpoints that are downloaded: ``pretrained.create_pretrained_model``.
    """
    spec = get_spec(name)
    if padding not in efficientnet.PADDINGS:
        raise ConfigError(f"--padding {padding}: choose one of {', '.join(efficientnet.PADDINGS)}")
    model = spec.builder(num_classes, spec.dropout if dropout is None else dropout, drop_path, padding)
    if weights is not None:
        load_weights(model, weights, spec, name)
    return model


__all__ = [
    "LoadReport",
    "create_model",
    "load_weights",
    "list_models",
    "get_spec",
    "REGISTRY",
    "ResNetV2",
    "StdConv2d",
    "WeightsError",
]
