"""torchvision EfficientNets with the papers' heads, plus a tiny variant for CPU demos.

torchvision's classifier is ``Sequential(Dropout(p), Linear)``; method A uses p = 0.7
on EfficientNetV2-S, method B p = 0.4 on EfficientNet-B4 (global average pool,
dropout, dense softmax).

``drop_path`` is torchvision's ``stochastic_depth_prob`` (the rate of the last block, rising
linearly from 0). torchvision's own default is 0.2; the papers name no stochastic depth,
so spermfuse builds every EfficientNet without it unless asked (``--drop-path``).

``padding="same"`` builds the network the way TensorFlow defined it, for checkpoints trained
there (the EfficientNet authors' own, Keras's): every convolution whose TF "SAME" padding is
not symmetric (the stride-2 ones) pads asymmetrically, and BatchNorm uses Keras's epsilon
1e-3 (torchvision's V2 builders already do; its B-series uses PyTorch's 1e-5).
"""

from __future__ import annotations

import math
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from torchvision.models import efficientnet as tv

PADDINGS = ("symmetric", "same")
TF_BATCHNORM_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) of TensorFlow's "SAME" padding along one axis.

    TF pads just enough for ``ceil(size / stride)`` outputs and puts the odd pixel after,
    so a stride-2 3x3 convolution on an even size pads 0 before and 1 after, where a
    symmetric padding of 1 shifts every window one pixel up and left.
    """
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed from each input's size.

    Same parameters (and state-dict keys) as ``nn.Conv2d``; only the padding differs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return self._conv_forward(F.pad(x, (left, right, top, bottom)), self.weight, self.bias)


def _differs_from_symmetric(conv: nn.Conv2d) -> bool:
    """Whether TF's "SAME" padding of ``conv`` can differ from its symmetric one."""
    odd_total = any((k - 1) * d % 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return any(s > 1 for s in conv.stride) or odd_total


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Switch ``model`` (in place) to TensorFlow's padding and BatchNorm epsilon; returns it."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and _differs_from_symmetric(child):
                same = Conv2dSame(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    0,
                    child.dilation,
                    child.groups,
                    bias=child.bias is not None,
                )
                same.load_state_dict(child.state_dict())
                setattr(parent, name, same)
            elif isinstance(child, nn.BatchNorm2d):
                child.eps = TF_BATCHNORM_EPS
    return model


def torchvision_efficientnet() -> ModuleType:
    """torchvision's EfficientNet module, imported when a network is built: importing torchvision
    takes torch._dynamo with it (1.5 s on 2 cores), which a program that only reads logits, or
    refuses a flag, should not wait for."""
    from torchvision.models import efficientnet

    return efficientnet


def is_efficientnet(model: nn.Module) -> bool:
    """Whether ``model`` is one of torchvision's EfficientNets (every builder here makes one)."""
    return isinstance(model, torchvision_efficientnet().EfficientNet)


def _with_padding(model: tv.EfficientNet, padding: str) -> tv.EfficientNet:
    return use_tf_same_padding(model) if padding == "same" else model


def _torchvision_variant(
    name: str, num_classes: int, dropout: float, drop_path: float, padding: str
) -> tv.EfficientNet:
    """torchvision's EfficientNet builder ``name``, untrained, with TensorFlow's "same" padding if asked."""
    builder = getattr(torchvision_efficientnet(), name)
    model = builder(weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=drop_path)
    return _with_padding(model, padding)


def efficientnet_v2_s(
    num_classes: int, dropout: float = 0.7, drop_path: float = 0.0, padding: str = "symmetric"
) -> tv.EfficientNet:
    """EfficientNetV2-S (20.20 M parameters with 18 classes)."""
    return _torchvision_variant("efficientnet_v2_s", num_classes, dropout, drop_path, padding)


def efficientnet_b4(
    num_classes: int, dropout: float = 0.4, drop_path: float = 0.0, padding: str = "symmetric"
) -> tv.EfficientNet:
    """EfficientNet-B4 with method B's head."""
    return _torchvision_variant("efficientnet_b4", num_classes, dropout, drop_path, padding)


def efficientnet_b0(
    num_classes: int, dropout: float = 0.2, drop_path: float = 0.0, padding: str = "symmetric"
) -> tv.EfficientNet:
    """EfficientNet-B0, a small relative for quick experiments."""
    return _torchvision_variant("efficientnet_b0", num_classes, dropout, drop_path, padding)


def efficientnet_tiny(
    num_classes: int, dropout: float = 0.2, drop_path: float = 0.0, padding: str = "symmetric"
) -> tv.EfficientNet:
    """A narrow four-stage EfficientNetV2-style net (0.43 M parameters, ~19 MFLOPs at 80 px).

    Sized like ``resnetv2_tiny`` so the CPU demo fuses two comparable backbones, as the
    paper fuses two of similar accuracy.
    """
    torchvision = torchvision_efficientnet()
    config = [
        torchvision.FusedMBConvConfig(2, 3, 2, 24, 32, 1),
        torchvision.FusedMBConvConfig(4, 3, 2, 32, 48, 1),
        torchvision.MBConvConfig(4, 3, 2, 48, 96, 2, width_mult=1.0, depth_mult=1.0),
        torchvision.MBConvConfig(6, 3, 1, 96, 128, 1, width_mult=1.0, depth_mult=1.0),
    ]
    norm = partial(nn.BatchNorm2d, eps=1e-3)
    model = torchvision.EfficientNet(
        config, dropout, drop_path, num_classes=num_classes, norm_layer=norm, last_channel=512
    )
    return _with_padding(model, padding)
