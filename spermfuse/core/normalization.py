"""The input normalisations that pretrained weights expect (mean and std per RGB channel of [0, 1] pixels)."""

from __future__ import annotations

# torchvision's and timm's ImageNet-trained PyTorch weights.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# [0, 1] -> [-1, 1]: what BiT and TensorFlow-trained EfficientNetV2 checkpoints expect.
UNIT_RANGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
UNIT_RANGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
