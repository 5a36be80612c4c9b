"""Where spermfuse keeps what it makes once and reuses: ``$SPERMFUSE_CACHE`` (default
``~/.cache/spermfuse``).

- ``weights/``: verified downloads of catalogued checkpoints (``download.py``);
- ``sperm18-v<generator>-seed42[-scale<s>]/`` and ``sperm18-v<generator>-seed<s>-<n>-per-class/``:
  the embedded default data set and the demo's pretraining set (``synthetic/cached_sets.py``);
- ``demo-pretrain-<fingerprint>/``: the demo's pretrained checkpoints (``pretrain.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_VARIABLE = "SPERMFUSE_CACHE"


def cache_root() -> Path:
    """``$SPERMFUSE_CACHE`` or ``~/.cache/spermfuse``."""
    return Path(os.environ.get(CACHE_VARIABLE, Path.home() / ".cache" / "spermfuse"))


def weights_cache() -> Path:
    """The folder of downloaded checkpoints."""
    return cache_root() / "weights"


def pretraining_root(fingerprint: str) -> Path:
    """Where the demo's pretrained checkpoints of one recipe are cached."""
    return cache_root() / f"demo-pretrain-{fingerprint}"
