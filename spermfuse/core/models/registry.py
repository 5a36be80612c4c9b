"""The architectures by name: how to build each, its default dropout, its family and its head.

Besides the registry, every torchvision classifier is a member: ``tv:<name>`` (``tv:mobilenet_v3_large``,
``tv:resnet18``, ``tv:convnext_tiny``, ...), built by ``torchvision.models.get_model`` without
weights, its ImageNet head replaced by one for the data's classes.

The head is found the same way in every family: the last ``nn.Linear`` (or, as in SqueezeNet, the
last 1x1 convolution) whose output is the 1,000 ImageNet classes, so a torchvision state dict
(``--weights FILE``) loads by its own key names, strictly, with only that head re-initialised when
the class count differs. GoogLeNet and Inception-v3 are built without their auxiliary heads, and
a checkpoint's auxiliary weights are left aside on loading. Their input normalisation is
ImageNet's, as their published weights expect.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from . import efficientnet
from .resnetv2 import ResNetV2


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture of the registry, and which checkpoints fit it."""

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


# --------------------------------------------------------------------------- torchvision's classifiers: tv:<name>

PREFIX = "tv:"
IMAGENET_CLASSES = 1000
AUXILIARY_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")  # GoogLeNet's and Inception-v3's side heads
_WITHOUT_AUXILIARY = {
    "googlenet": dict(aux_logits=False, init_weights=True),
    "inception_v3": dict(aux_logits=False, init_weights=True),
}


def _torchvision_classifiers() -> list[str]:
    # Imported here, not at the top: torchvision's import costs 1.5 s (efficientnet.torchvision_efficientnet).
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_names() -> list[str]:
    """``tv:<name>`` for every classification model torchvision builds."""
    return [PREFIX + name for name in _torchvision_classifiers()]


def is_torchvision_name(name: str) -> bool:
    """Whether ``name`` names a torchvision network (``tv:`` prefix) rather than one of this package's."""
    return name.startswith(PREFIX)


def required_input_size(name: str) -> int | None:
    """The one input side a torchvision network accepts as built here (vision transformers and
    MaxViT: 224 px), or None when any size of at least 32 px works."""
    base = name.removeprefix(PREFIX)
    return 224 if is_torchvision_name(name) and (base.startswith("vit_") or base == "maxvit_t") else None


def imagenet_head(model: nn.Module) -> str:
    """The name of the layer that gives the 1,000 ImageNet logits: the last linear layer (or 1x1
    convolution) with 1,000 outputs."""
    found = [
        name
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES)
        or (isinstance(module, nn.Conv2d) and module.out_channels == IMAGENET_CLASSES)
    ]
    if not found:
        raise ConfigError(f"{type(model).__name__}: no layer with {IMAGENET_CLASSES} outputs to replace")
    return found[-1]


def replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    """The ImageNet head ``head`` replaced by a freshly initialised one of the same kind for ``num_classes``."""
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, bias=old.bias is not None)
    setattr(parent, child, new)


def _base_name(name: str) -> str:
    base = name.removeprefix(PREFIX)
    if base not in _torchvision_classifiers():
        raise ConfigError(f"--arch {name}: torchvision has no classifier {base!r}; see train.py --list-models")
    return base


def _imagenet_model(base: str) -> nn.Module:
    import torchvision.models

    return torchvision.models.get_model(base, weights=None, **_WITHOUT_AUXILIARY.get(base, {}))


def torchvision_builder(name: str) -> Callable[[int, float, float, str], nn.Module]:
    """A registry builder ``(num_classes, dropout, drop_path, padding)`` for ``tv:<name>``. The
    network keeps torchvision's own dropout and stochastic depth: other values are refused
    rather than silently ignored."""
    base = _base_name(name)

    def build(num_classes: int, dropout: float, drop_path: float, padding: str) -> nn.Module:
        if not math.isnan(dropout) or drop_path > 0 or padding != "symmetric":
            raise ConfigError(
                f"--arch {name}: torchvision models keep their own dropout, stochastic depth and padding; "
                "leave --dropout, --drop-path and --padding out"
            )
        model = _imagenet_model(base)
        replace_head(model, imagenet_head(model), num_classes)
        return model

    return build


@functools.lru_cache(maxsize=None)
def head_name(name: str) -> str:
    """The head's module name in ``tv:<name>``, found on the network built once (on the meta
    device, without memory, where its initialisation allows)."""
    base = _base_name(name)
    try:
        with torch.device("meta"):
            return imagenet_head(_imagenet_model(base))
    except NotImplementedError:  # an initialisation that reads its tensors (RegNet)
        return imagenet_head(_imagenet_model(base))


def without_absent_auxiliary(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A torchvision checkpoint's auxiliary-head weights left aside when the model has no such head."""
    expected = model.state_dict()
    return {k: v for k, v in state.items() if k in expected or not k.startswith(AUXILIARY_PREFIXES)}
