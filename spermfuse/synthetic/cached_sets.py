"""The synthetic sets spermfuse makes once and reuses, in ``$SPERMFUSE_CACHE``: the embedded
default data set and the demo's pretraining sets, each named by its generator version and seed."""

from __future__ import annotations

from pathlib import Path

from .. import distributed
from ..cache import cache_root
from .writer import GENERATOR_VERSION, generate_once


def default_data_dir(scale: float | None = None) -> Path:
    """Where the embedded synthetic sperm18 set is cached."""
    suffix = "" if scale is None else f"-scale{scale:g}"
    return cache_root() / f"sperm18-v{GENERATOR_VERSION}-seed42{suffix}"


def pretraining_data_dir(seed: int, per_class: int, kind: str = "sperm18") -> Path:
    """Where a demo pretraining set is cached: named by what is in it, so recipes that differ
    only in training share it."""
    return cache_root() / f"{kind}-v{GENERATOR_VERSION}-seed{seed}-{per_class}-per-class"


def ensure_default_data(
    scale: float | None, context: distributed.DistributedContext = distributed.DistributedContext()
) -> Path:
    """Generate the embedded default data set on first use (rank 0), then reuse it."""
    folder = default_data_dir(scale)
    if context.is_main:
        generate_once(folder, "sperm18", seed=42, scale=scale)
    distributed.barrier(context)
    return folder
