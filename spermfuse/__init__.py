"""spermfuse: sperm-morphology classification with fused CNNs, in plain PyTorch.

Method A: EfficientNetV2-S + BiT ResNet50V2 with adaptive logit fusion.
Method B: hybrid Otsu preprocessing before a two-stage EfficientNet-B4.

The modules, their layers and the on-disk formats: docs/DESIGN.md.
"""

from .models import create_model, list_models

__version__ = "0.3.0.dev0"
__all__ = ["create_model", "list_models", "__version__"]
