"""Where spermfuse keeps what it makes once and reuses: ``$SPERMFUSE_CACHE`` (default
``~/.cache/spermfuse``).

- ``weights/``: verified downloads of catalogued checkpoints (``download.py``);
- ``sperm18-v<generator>-seed42[-scale<s>]/``: the embedded default data set (:func:`default_data_dir`);
- ``sperm18-v<generator>-seed<s>-<n>-per-class/`` and ``demo-pretrain-<fingerprint>/``: the
  demo's pretraining set and checkpoints (``pretrain.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import distributed, synthetic

CACHE_VARIABLE = "SPERMFUSE_CACHE"


def cache_root() -> Path:
    """``$SPERMFUSE_CACHE`` or ``~/.cache/spermfuse``."""
    return Path(os.environ.get(CACHE_VARIABLE, Path.home() / ".cache" / "spermfuse"))


def weights_cache() -> Path:
    """The folder of downloaded checkpoints."""
    return cache_root() / "weights"


def default_data_dir(scale: float | None = None) -> Path:
    """Where the embedded synthetic sperm18 set is cached."""
    suffix = "" if scale is None else f"-scale{scale:g}"
    return cache_root() / f"sperm18-v{synthetic.GENERATOR_VERSION}-seed42{suffix}"


def pretraining_data_dir(seed: int, per_class: int) -> Path:
    """Where a demo pretraining set is cached: named by what is in it, so recipes that differ
    only in training share it."""
    return cache_root() / f"sperm18-v{synthetic.GENERATOR_VERSION}-seed{seed}-{per_class}-per-class"


def pretraining_root(fingerprint: str) -> Path:
    """Where the demo's pretrained checkpoints of one recipe are cached."""
    return cache_root() / f"demo-pretrain-{fingerprint}"


def ensure_default_data(
    scale: float | None, context: distributed.DistributedContext = distributed.DistributedContext()
) -> Path:
    """Generate the embedded default data set on first use (rank 0), then reuse it."""
    folder = default_data_dir(scale)
    if context.is_main:
        synthetic.generate_once(folder, "sperm18", seed=42, scale=scale)
    distributed.barrier(context)
    return folder
