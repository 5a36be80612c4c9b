"""Pre-activation ResNetV2 in the Big Transfer (BiT) form.

He et al. 2016, "Identity mappings in deep residual networks": each bottleneck is
norm -> ReLU -> conv, three times, and the identity path is left untouched.
Kolesnikov et al. 2020, "Big Transfer": weight-standardised convolutions with
GroupNorm (32 groups) instead of BatchNorm, a 7x7/2 stem followed by a fixed
1-pixel zero pad and a 3x3/2 max-pool, stride on the 3x3 conv, a projection
shortcut on the pre-activated input of the first block of each stage, and a final
norm + ReLU before global average pooling.

ResNetV2-50x1 = blocks (3, 4, 6, 3), widths 256/512/1024/2048, 23.54 M parameters
with an 18-class head (the paper's Table).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class StdConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised to zero mean, unit variance per output channel.

    BiT computes this as a training-mode batch norm over the weights (eps 1e-8 for the
    ResNetV2 checkpoints). In inference (eval mode, no autograd) the standardised kernel
    is cached and recomputed only when the weight changes, which saves the work that
    makes weight standardisation the hot spot of batch-1 latency.
    """

    def __init__(self, *args, eps: float = 1e-8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.use_inference_cache = True
        self._cached_key: tuple | None = None
        self._cached_weight: torch.Tensor | None = None

    def standardized_weight(self) -> torch.Tensor:
        """The kernel standardised per output channel (zero mean, unit variance): BiT's weight standardisation."""
        # One fused batch-norm kernel over the kernel viewed as [1, out, in*kh*kw]: faster in
        # training (forward and backward) than var_mean arithmetic, and BiT's own formulation.
        flat = self.weight.reshape(1, self.out_channels, -1)
        return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def _inference_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device, self.weight.dtype)
        if key != self._cached_key:
            # Keep the weight's own layout (channels_last after model.to(memory_format=...)):
            # a kernel in the other layout would be converted again by every convolution.
            self._cached_weight = torch.empty_like(self.weight).copy_(self.standardized_weight().detach())
            self._cached_key = key
        return self._cached_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under torch.compile the cache's Python-side key would break the graph and force a
        # recompile per layer; the compiled graph computes the standardisation itself.
        compiling = torch.jit.is_tracing() or torch.compiler.is_compiling()
        use_cache = self.use_inference_cache and not self.training and not torch.is_grad_enabled() and not compiling
        weight = self._inference_weight() if use_cache else self.standardized_weight()
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm as BiT uses it: 32 groups (fewer only for narrower layers)."""
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-5)


class PreActBottleneck(nn.Module):
    """norm-ReLU-conv1x1, norm-ReLU-conv3x3 (stride), norm-ReLU-conv1x1, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 32) -> None:
        super().__init__()
        mid = out_channels // 4
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = StdConv2d(in_channels, mid, 1, bias=False)
        self.norm2 = group_norm(mid, groups)
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.norm3 = group_norm(mid, groups)
        self.conv3 = StdConv2d(mid, out_channels, 1, bias=False)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = StdConv2d(in_channels, out_channels, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.norm1(x), inplace=True)  # in place: GroupNorm's backward needs its input, not its output
        # The projection sees the pre-activated input; the identity sees the raw input.
        shortcut = self.shortcut(preact) if self.shortcut is not None else x
        out = self.conv1(preact)
        out = self.conv2(F.relu(self.norm2(out), inplace=True))
        out = self.conv3(F.relu(self.norm3(out), inplace=True))
        return out + shortcut


class ResNetV2(nn.Module):
    """BiT ResNetV2: stem, four stages of pre-activation bottlenecks, norm, pool, dropout, linear."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        width_factor: float = 1.0,
        stem_channels: int = 64,
        dropout: float = 0.5,
        groups: int = 32,
    ) -> None:
        super().__init__()
        stem_channels = int(stem_channels * width_factor)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", StdConv2d(3, stem_channels, 7, stride=2, padding=3, bias=False))
        self.stem.add_module("pad", nn.ConstantPad2d(1, 0.0))  # BiT's fixed pad, then pool without padding
        self.stem.add_module("pool", nn.MaxPool2d(3, stride=2))
        channels = stem_channels
        self.stages = nn.ModuleList()
        for index, depth in enumerate(layers):
            out_channels = int(256 * 2**index * width_factor)
            stride = 1 if index == 0 else 2
            blocks = [PreActBottleneck(channels, out_channels, stride, groups)]
            blocks += [PreActBottleneck(out_channels, out_channels, 1, groups) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.norm = group_norm(channels, groups)
        # A module (not an in-place call) so that Grad-CAM can hook the features that are pooled.
        self.act = nn.ReLU()
        self.num_features = channels
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.fc.weight)  # BiT's zero-initialised head
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map, after the last pre-activation norm and ReLU (before pooling)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.act(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1)
        return self.fc(self.head_drop(x))
