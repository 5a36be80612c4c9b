"""spermfuse: sperm-morphology classification with fused CNNs, in plain PyTorch.

Method A: EfficientNetV2-S + BiT ResNet50V2 with adaptive logit fusion.
Method B: hybrid Otsu preprocessing before a two-stage EfficientNet-B4.
"""
__version__ = "0.1.0"
