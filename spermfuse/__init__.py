"""spermfuse: sperm-morphology classification with fused CNNs, in plain PyTorch.

Method A: EfficientNetV2-S + BiT ResNet50V2 with adaptive logit fusion.
Method B: hybrid Otsu preprocessing before a two-stage EfficientNet-B4.

Importing the package imports nothing else: ``create_model`` and ``list_models`` load the
networks on first use (PEP 562), so ``spermfuse.core.metrics`` and the other numpy-only
modules stay light. The modules, their layers and the on-disk formats: docs/DESIGN.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0.dev0"
_LAZY = {"create_model": "spermfuse.core.models", "list_models": "spermfuse.core.models"}
__all__ = ["create_model", "list_models", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spermfuse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
