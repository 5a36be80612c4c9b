"""spermfuse: sperm-morphology classification with fused CNNs, in plain PyTorch.

Method A: EfficientNetV2-S + BiT ResNet50V2 with adaptive logit fusion.
Method B: hybrid Otsu preprocessing before a two-stage EfficientNet-B4.

Submodules: data, transforms, segmentation, synthetic, models, engine, trainer,
checkpoint, distributed, fusion, metrics, report, flops, profiling, fused_pair,
cuda_graph, inference.
"""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
