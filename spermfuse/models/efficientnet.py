"""torchvision EfficientNets with the papers' heads, plus a tiny variant for CPU demos.

torchvision's classifier is ``Sequential(Dropout(p), Linear)``; method A uses p = 0.7
on EfficientNetV2-S, method B p = 0.4 on EfficientNet-B4 (global average pool,
dropout, dense softmax).

``drop_path`` is torchvision's ``stochastic_depth_prob`` (the rate of the last block, rising
linearly from 0). torchvision's own default is 0.2; the papers name no stochastic depth,
so spermfuse builds every EfficientNet without it unless asked (``--drop-path``).
"""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import efficientnet as tv


def efficientnet_v2_s(num_classes: int, dropout: float = 0.7, drop_path: float = 0.0) -> tv.EfficientNet:
    """EfficientNetV2-S (20.20 M parameters with 18 classes)."""
    return tv.efficientnet_v2_s(weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=drop_path)


def efficientnet_b4(num_classes: int, dropout: float = 0.4, drop_path: float = 0.0) -> tv.EfficientNet:
    """EfficientNet-B4 with method B's head."""
    return tv.efficientnet_b4(weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=drop_path)


def efficientnet_b0(num_classes: int, dropout: float = 0.2, drop_path: float = 0.0) -> tv.EfficientNet:
    """EfficientNet-B0, a small relative for quick experiments."""
    return tv.efficientnet_b0(weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=drop_path)


def efficientnet_tiny(num_classes: int, dropout: float = 0.2, drop_path: float = 0.0) -> tv.EfficientNet:
    """A narrow four-stage EfficientNetV2-style net (0.43 M parameters, ~19 MFLOPs at 80 px).

    Sized like ``resnetv2_tiny`` so the CPU demo fuses two comparable backbones, as the
    paper fuses two of similar accuracy.
    """
    config = [
        tv.FusedMBConvConfig(2, 3, 2, 24, 32, 1),
        tv.FusedMBConvConfig(4, 3, 2, 32, 48, 1),
        tv.MBConvConfig(4, 3, 2, 48, 96, 2, width_mult=1.0, depth_mult=1.0),
        tv.MBConvConfig(6, 3, 1, 96, 128, 1, width_mult=1.0, depth_mult=1.0),
    ]
    norm = partial(nn.BatchNorm2d, eps=1e-3)
    return tv.EfficientNet(config, dropout, drop_path, num_classes=num_classes, norm_layer=norm, last_channel=512)
